"""One root exception for everything a user can cause; the CLI maps each to an exit code.

Library code raises these and never exits; `streamclf.cli` turns them into one line on stderr
and the documented exit code (docs/cli.md).
"""

from __future__ import annotations

EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), at start-up or while running: the shell's 128 + 2


class StreamclfError(Exception):
    """Base of every expected failure: bad input, bad config, missing device, broken model."""

    exit_code = 1


class ConfigError(StreamclfError):
    """The config file or a command-line value is invalid; the message names the key."""

    exit_code = 2


class AudioInputError(StreamclfError):
    """An audio source cannot be opened or read: missing device, unreadable file, no ffmpeg."""

    exit_code = 3


class ModelError(StreamclfError):
    """A model file is missing, corrupt, or has the wrong inputs/outputs."""

    exit_code = 4


class EngineError(StreamclfError):
    """An inference engine cannot be loaded or built on this machine."""

    exit_code = 5


class FeedError(StreamclfError):
    """The ZeroMQ feed cannot be bound or connected, or refuses an insecure remote bind."""

    exit_code = 6
