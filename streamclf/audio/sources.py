"""The audio source a stream's config describes: a device, a file, a URL (ffmpeg) or stdin.

The shape every source shares is in `streamclf.audio.base`; the kinds are in `files`, `pcm`
(stdin and ffmpeg) and `devices` (PortAudio).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamclf.audio.base import Source
from streamclf.audio.devices import DeviceSource
from streamclf.audio.files import FileSource
from streamclf.audio.pcm import FfmpegSource, StdinSource
from streamclf.errors import AudioInputError

if TYPE_CHECKING:
    from streamclf.config import StreamConfig


def open_source(spec: StreamConfig) -> Source:
    """The opened source a stream's config section describes (``sample_rate``/``channels``
    known)."""
    if spec.source == "device":
        # a chosen channel beyond the first two must be opened to be picked
        wide = spec.channel + 1 if isinstance(spec.channel, int) and spec.channel >= 2 else None
        source: Source = DeviceSource(spec.device if spec.device != "" else None,
                                      channels=wide, blocksize=spec.blocksize)  # fmt: skip
    elif spec.source == "file":
        source = FileSource(spec.path, realtime=spec.realtime, loop=spec.loop,
                            blocksize=spec.blocksize)  # fmt: skip
    elif spec.source == "url":
        source = FfmpegSource(spec.url, blocksize=spec.blocksize)
    elif spec.source == "stdin":
        source = StdinSource(sample_rate=spec.stdin_rate, channels=spec.stdin_channels,
                             fmt=spec.stdin_format, blocksize=spec.blocksize)  # fmt: skip
    else:
        msg = f"unknown source kind {spec.source!r}"
        raise AudioInputError(msg)
    source.open()
    return source
