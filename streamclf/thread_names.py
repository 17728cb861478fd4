"""Each daemon thread named in /proc as it is in Python, so that `top -H`, `ps -L` and the
bench's capacity trials see which stage uses the CPU: before 3.14, Python keeps a thread's name
to itself, and every thread shows the process's name."""

from __future__ import annotations

import ctypes
import functools
import threading

PR_SET_NAME = 15  # prctl(2)
COMM_BYTES = 15  # what the kernel keeps of a thread's name


@functools.cache
def _prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the names stay Python's own
        return None


def name_this_thread() -> None:
    """Give the calling OS thread its Python name (its first 15 bytes). The main thread keeps
    the process's name: renaming it would rename the process (`ps`, `pidof`)."""
    thread = threading.current_thread()
    prctl = _prctl()
    if prctl is not None and thread is not threading.main_thread():
        prctl(PR_SET_NAME, thread.name.encode()[:COMM_BYTES], 0, 0, 0)
