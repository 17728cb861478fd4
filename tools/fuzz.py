"""Coverage-guided fuzzing (atheris, i.e. libFuzzer) of the three readers of untrusted bytes.

Why, next to the hypothesis tests (tests/test_config.py, tests/test_feed_schema.py,
tests/test_reliability_fuzz.py): hypothesis draws from strategies someone wrote, so it explores
the shapes that person thought of. libFuzzer mutates raw bytes and keeps every input that reaches
new code (streamclf and tomllib are instrumented), so it walks into inputs no strategy describes.
The pcm and feed checks are the hypothesis tests' own (tests/reliability_helpers.py,
tests/feed_helpers.py).

Targets (any other exception, or a failed check, is a crash):

    config  the bytes as a config file through `load_config` (what `serve --config` and SIGHUP
            reload run): a Config, or a one-line `ConfigError`. Seeds: configs/*.toml.
    pcm     format, channels, block size and pipe read sizes from the input's tail, raw PCM from
            the rest, through `StdinSource` into a `RingBuffer`: every whole frame out exactly,
            NaN/Inf as 0 and counted, the partial frame dropped, the source ends (a hang fails).
    feed    1-4 frames cut from the input → `decode_frames`: a `MessageError`, or a message that
            re-encodes and decodes to the same. Seeds: a valid message of each kind.

Usage (everything after the target goes to libFuzzer: -runs, -max_total_time, -timeout, -max_len,
corpus folders, or files to replay):

    python tools/fuzz.py config -max_total_time=60 -timeout=10
    python tools/fuzz.py feed -runs=200000 my-corpus/         # your own corpus folder
    python tools/fuzz.py feed crash-0123abcd                   # replay one input
    python tools/fuzz.py feed --strict-errors -runs=1000       # rejections count as crashes too

With no corpus given, the corpus is $TMPDIR/streamclf-fuzz/TARGET: seeded, and kept between runs
so each run starts from what the last one found. A crash prints the traceback, writes the input
to ./crash-<sha1> (-artifact_prefix=DIR/ puts it elsewhere) and exits non-zero.
tests/test_reliability_atheris.py runs each target briefly. Needs atheris: the dev extra installs
it where a wheel exists (Linux x86_64, CPython < 3.13).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import atheris

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

with atheris.instrument_imports(include=["streamclf", "tomllib"]):
    from streamclf.audio.pcm import PCM_FORMATS
    from streamclf.config import load_config
    from streamclf.errors import ConfigError
    from streamclf.feed.schema import MessageError, decode_frames

# after the instrumented imports: the modules they share are instrumented already
from feed_helpers import assert_round_trips, change_message, genre_message, status_message
from reliability_helpers import check_stdin_reader

from streamclf.logs import configure_logging

MAX_FRAMES = 4  # feed: fewer and more frames than the two of a message
PCM_FORMAT_NAMES = sorted(PCM_FORMATS)


def config_target(expected: tuple[type[Exception], ...]) -> Callable[[bytes], None]:
    """`load_config` on a file that holds the input (a memfd: nothing left on disk)."""
    fd = os.memfd_create("fuzz.toml")
    path = f"/proc/self/fd/{fd}"

    def one_input(data: bytes) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        try:
            load_config(path)
        except expected as exc:
            if "\n" in str(exc):
                msg = f"a config error of more than one line: {str(exc)!r}"
                raise AssertionError(msg) from None

    return one_input


def pcm_target(_expected: tuple[type[Exception], ...]) -> Callable[[bytes], None]:
    """Raw PCM through the stdin source; nothing is an expected error here."""

    def one_input(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        fmt = fdp.PickValueInList(PCM_FORMAT_NAMES)
        channels = fdp.ConsumeIntInRange(1, 6)
        blocksize = fdp.ConsumeIntInRange(1, 300)
        sizes = [fdp.ConsumeIntInRange(1, 500) for _ in range(fdp.ConsumeIntInRange(1, 8))]
        check_stdin_reader(fdp.ConsumeBytes(fdp.remaining_bytes()), fmt=fmt, channels=channels,
                           blocksize=blocksize, sizes=sizes)  # fmt: skip

    return one_input


def split_frames(data: bytes) -> list[bytes]:
    """1-4 frames from one input. FuzzedDataProvider takes integers from the end: the last byte
    is the count, the bytes before it the lengths of all frames but the last (one byte each);
    the frames are cut from the front, the last frame is whatever remains."""
    fdp = atheris.FuzzedDataProvider(data)
    count = fdp.ConsumeIntInRange(1, MAX_FRAMES)
    lengths = [fdp.ConsumeIntInRange(0, 255) for _ in range(count - 1)]
    return [*(fdp.ConsumeBytes(n) for n in lengths), fdp.ConsumeBytes(fdp.remaining_bytes())]


def join_frames(frames: list[bytes]) -> bytes:
    """The input that `split_frames` cuts into `frames` (all but the last ≤ 255 bytes)."""
    lengths = bytes(len(frame) for frame in reversed(frames[:-1]))
    return b"".join(frames) + lengths + bytes([len(frames) - 1])


def feed_target(expected: tuple[type[Exception], ...]) -> Callable[[bytes], None]:
    """`decode_frames` on 1-4 frames; a decoded message must survive a round trip."""

    def one_input(data: bytes) -> None:
        try:
            message = decode_frames(split_frames(data))
        except expected:
            return
        assert_round_trips(message)

    return one_input


def feed_seeds() -> list[bytes]:
    messages = [genre_message(), change_message(), status_message(),
                genre_message(probs=[0.25] * 50, candidates=[["rock", 0.5]])]  # fmt: skip
    seeds = [join_frames(m.to_frames()) for m in messages]
    if [split_frames(s) for s in seeds] != [m.to_frames() for m in messages]:
        msg = "atheris.FuzzedDataProvider no longer reads as split_frames expects"
        raise RuntimeError(msg)
    return seeds


def config_seeds() -> list[bytes]:
    return [path.read_bytes() for path in sorted((REPO / "configs").glob("*.toml"))]


@dataclass(frozen=True)
class Target:
    build: Callable[[tuple[type[Exception], ...]], Callable[[bytes], None]]  # given `expected`
    expected: tuple[type[Exception], ...]  # the documented errors: a rejection, not a crash
    seeds: Callable[[], list[bytes]]


TARGETS = {
    "config": Target(config_target, (ConfigError,), config_seeds),
    "pcm": Target(pcm_target, (), list),  # no seeds: any bytes are PCM
    "feed": Target(feed_target, (MessageError,), feed_seeds),
}


def default_corpus(target: str) -> Path:
    """$TMPDIR/streamclf-fuzz/TARGET with the target's seeds written in (kept between runs)."""
    corpus = Path(tempfile.gettempdir()) / "streamclf-fuzz" / target
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(TARGETS[target].seeds()):
        (corpus / f"seed-{i}").write_bytes(seed)
    return corpus


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description="Coverage-guided fuzzing of the config loader, the stdin PCM reader and the "
                    "feed decoder.",
        epilog="Other arguments go to libFuzzer (-help=1 lists them).", add_help=False)  # fmt: skip
    parser.add_argument("--help", action="help", help="show this help (-help=1: libFuzzer's)")
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--strict-errors", action="store_true",
                        help="every exception is a crash, the documented ConfigError and "
                             "MessageError too: finds the inputs that are rejected, and shows "
                             "that a failure is caught (the tests use it)")  # fmt: skip
    args, fuzzer_args = parser.parse_known_args(argv[1:])
    configure_logging("error")  # the stdin source's state lines on every input are noise here
    target = TARGETS[args.target]
    one_input = target.build(() if args.strict_errors else target.expected)
    if all(arg.startswith("-") for arg in fuzzer_args):  # no corpus and no input given
        fuzzer_args.append(str(default_corpus(args.target)))
    atheris.Setup([argv[0], *fuzzer_args], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
