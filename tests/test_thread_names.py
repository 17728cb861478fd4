"""Daemon threads named in /proc (`streamclf.thread_names`), and those names read back into
kinds of work (`streamclf.testing.daemon`), on this process's real /proc."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from streamclf.testing.daemon import (
    MAIN_THREAD,
    NATIVE_THREADS,
    cpu_by_kind,
    thread_kind,
    threads_cpu_s,
)
from streamclf.thread_names import COMM_BYTES, name_this_thread

needs_proc = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")


def _named_thread(name: str, *, busy_s: float = 0.0) -> tuple[int, dict]:
    """A thread called `name` that names itself, spins `busy_s` of CPU and reads every
    thread's name and CPU while it still runs: (its OS thread id, that reading)."""
    seen: dict = {}

    def body() -> None:
        name_this_thread()
        until = time.thread_time() + busy_s
        while time.thread_time() < until:
            pass
        seen["tid"], seen["threads"] = threading.get_native_id(), threads_cpu_s(os.getpid())

    thread = threading.Thread(target=body, name=name)
    thread.start()
    thread.join()
    return seen["tid"], seen["threads"]


@needs_proc
class TestNameThisThread:
    def test_proc_shows_the_python_name(self):
        tid, threads = _named_thread("engine")
        assert threads[tid][0] == "engine"

    def test_long_names_keep_their_first_15_bytes(self):
        tid, threads = _named_thread("stream-worker-12345")
        assert threads[tid][0] == "stream-worker-12345"[:COMM_BYTES]

    def test_the_main_thread_keeps_the_process_name(self):
        before = threads_cpu_s(os.getpid())[os.getpid()][0]
        name_this_thread()
        assert threads_cpu_s(os.getpid())[os.getpid()][0] == before


class TestThreadKind:
    @pytest.mark.parametrize(("name", "kind"), [
        ("stream-worker-0", "stream workers"), ("engine", "engine worker"),
        ("streamclf-file", "source readers"), ("output-mqtt", "outputs"),
        ("icy-titles", "ICY"), ("ZMQbg/IO/0", "ZeroMQ"), ("streamclf", "native threads"),
    ])
    def test_names(self, name, kind):
        assert thread_kind(name).startswith(kind)

    def test_the_main_thread_by_its_id_whatever_its_name(self):
        assert thread_kind("engine", main=True) == MAIN_THREAD


class TestCpuByKind:
    def test_differences_summed_per_kind_new_threads_from_zero(self):
        before = {1: ("python", 1.0), 2: ("stream-worker-0", 2.0), 3: ("stream-worker-1", 0.5)}
        after = {1: ("python", 1.5), 2: ("stream-worker-0", 2.25), 3: ("stream-worker-1", 1.0),
                 4: ("python", 0.75)}
        spent = cpu_by_kind(before, after, pid=1)
        assert spent[MAIN_THREAD] == pytest.approx(0.5)
        assert spent[thread_kind("stream-worker-0")] == pytest.approx(0.75)
        assert spent[NATIVE_THREADS] == pytest.approx(0.75)

    @needs_proc
    def test_a_busy_named_thread_is_counted_as_its_kind(self):
        before = threads_cpu_s(os.getpid())
        _, after = _named_thread("stream-worker-9", busy_s=0.2)
        assert cpu_by_kind(before, after, pid=os.getpid())[thread_kind("stream-")] >= 0.15
