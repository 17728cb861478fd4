"""Incremental log-mel framer: 16 kHz samples in, sliding windows of log-mel frames out.

Only new STFT frames are computed on each push (O(hop) work per hop); the last window's frames
and per-frame energies live in fixed rings indexed by frame number. Streaming a signal in any
block sizes and then calling ``flush()`` gives exactly ``mel.logmel(signal)``, librosa's centred
STFT included: the left padding is 256 zeros held from the start, the right padding is added by
``flush()``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamclf.errors import AudioInputError
from streamclf.features.mel import (
    HOP_LENGTH,
    N_FFT,
    N_MELS,
    SAMPLE_RATE_HZ,
    WINDOW_FRAMES,
    compress,
    frame_signal,
    frames_for_seconds,
    mel_power,
    power_spectrum,
)

HOP_FRAMES = frames_for_seconds(1.0)  # 62
FILE_BLOCK_FRAMES = 1 << 16  # samples of a file read at once: ~1.5 s at 44.1 kHz
_PAD = N_FFT // 2


@dataclass(frozen=True, slots=True)
class Window:
    """One classifier input: ``frames`` float32 ``[window_frames, 96]`` (its own copy).

    Frames ``start_frame .. start_frame + window_frames - 1`` of the stream; ``t_start_s`` and
    ``t_end_s`` are stream time (frame × 16 ms); ``level_dbfs`` is 10·log10 of the mean square
    of the samples under the window (-inf for digital silence); ``arrival`` is the monotonic
    time its last sample entered the ring (nan when unknown, e.g. offline).
    """

    index: int
    start_frame: int
    frames: np.ndarray
    t_start_s: float
    t_end_s: float
    level_dbfs: float
    arrival: float


def level_dbfs(mean_square: float) -> float:
    """Mean square → dBFS (full-scale square wave = 0 dBFS); exact silence → -inf."""
    return 10.0 * math.log10(mean_square) if mean_square > 0.0 else -math.inf


def _ring_copy(ring: np.ndarray, first: int, n: int, out: np.ndarray) -> None:
    """Copy ``n`` items starting at absolute index ``first`` of a ring into ``out[:n]``."""
    cap = ring.shape[0]
    i = first % cap
    head = min(n, cap - i)
    out[:head] = ring[i : i + head]
    out[head:n] = ring[: n - head]


def _ring_store(ring: np.ndarray, first: int, block: np.ndarray) -> None:
    """Store ``block`` (at most the ring's length) at absolute index ``first``."""
    cap = ring.shape[0]
    i = first % cap
    head = min(block.shape[0], cap - i)
    ring[i : i + head] = block[:head]
    ring[: block.shape[0] - head] = block[head:]


class LogMelFramer:
    """Streaming musicnn front end emitting a :class:`Window` of ``window_frames`` every
    ``hop_frames`` frames (defaults: 3 s = 187 frames every 1 s = 62 frames).

    ``phase_frames`` delays the window grid: after each (re)start the first window begins that
    many frames in. The daemon gives its streams different phases so that their windows fall
    due at different moments of the hop instead of all at once (docs/architecture.md).
    """

    def __init__(self, window_frames: int = WINDOW_FRAMES, hop_frames: int = HOP_FRAMES,
                 phase_frames: int = 0) -> None:
        if window_frames < 1 or hop_frames < 1:
            msg = f"window and hop must be >= 1 frame, got {window_frames} and {hop_frames}"
            raise ValueError(msg)
        if not 0 <= phase_frames < hop_frames:
            msg = f"phase must be 0..hop-1 frames ({hop_frames - 1}), got {phase_frames}"
            raise ValueError(msg)
        self.window_frames = int(window_frames)
        self.hop_frames = int(hop_frames)
        self.phase_frames = int(phase_frames)
        self._logmel = np.zeros((self.window_frames, N_MELS), dtype=np.float32)
        self._energy = np.zeros(self.window_frames, dtype=np.float64)
        # Padded samples not yet consumed by a frame: always fewer than N_FFT after a push.
        self._pending = np.zeros(N_FFT, dtype=np.float32)
        self._n_frames = 0  # frames of the stream so far, across resets: the stream's clock
        self._n_windows = 0
        self.reset()

    def reset(self) -> None:
        """Start afresh (after a gap, or at the end): the next frame is centred on the next
        sample pushed, and the next window holds only frames computed after this call. Frame
        and window numbers, and so stream time, carry on from where they were."""
        self._n_pending = _PAD  # librosa's left centre padding: 256 zeros
        self._pending[:_PAD] = 0.0
        self._origin = self._n_frames  # the first frame after the reset
        self._windows_since_reset = 0
        self._arrival = math.nan

    def push(self, samples: np.ndarray, arrival: float = math.nan) -> Iterator[Window]:
        """Feed float32 16 kHz mono ``samples[n]``; returns the windows they complete (0..n).

        Work is done eagerly, so the result may be iterated or not.
        """
        self._arrival = arrival
        if samples.shape[0] == 0:
            return iter(())
        buf = np.concatenate((self._pending[: self._n_pending], samples.astype(np.float32)))
        return iter(self._consume(buf))

    def flush(self) -> Iterator[Window]:
        """End of a finite stream: add librosa's right centre padding, return the last windows,
        then reset. Leftover frames that do not fill a window are dropped, as musicnn does."""
        buf = np.zeros(self._n_pending + _PAD, dtype=np.float32)
        buf[: self._n_pending] = self._pending[: self._n_pending]
        windows = self._consume(buf)
        self.reset()
        return iter(windows)

    def samples_to_next_window(self) -> int:
        """16 kHz samples still to push before the next window is complete.

        Lets a stream worker sleep until then instead of framing every small block as it comes.
        """
        frames_needed = (self.phase_frames + self._windows_since_reset * self.hop_frames
                         + self.window_frames)
        padded_needed = (frames_needed - 1) * HOP_LENGTH + N_FFT
        padded_seen = (self._n_frames - self._origin) * HOP_LENGTH + self._n_pending
        return max(0, padded_needed - padded_seen)

    @property
    def frames_done(self) -> int:
        """STFT frames computed so far in this stream."""
        return self._n_frames

    def _consume(self, buf: np.ndarray) -> list[Window]:
        frames = frame_signal(buf)
        k = frames.shape[0]
        used = k * HOP_LENGTH
        left = buf.shape[0] - used
        self._pending[:left] = buf[used:]
        self._n_pending = left
        if k == 0:
            return []
        new_logmel = compress(mel_power(power_spectrum(frames)))
        # Frame t's own hop of samples is the second half of its padded frame.
        hops = frames[:, _PAD:].astype(np.float64)
        new_energy = np.einsum("ij,ij->i", hops, hops)
        windows = self._windows_ending_in(new_logmel, new_energy)
        first = self._n_frames
        keep = min(k, self.window_frames)
        _ring_store(self._logmel, first + k - keep, new_logmel[k - keep :])
        _ring_store(self._energy, first + k - keep, new_energy[k - keep :])
        self._n_frames += k
        return windows

    def _windows_ending_in(self, new_logmel: np.ndarray, new_energy: np.ndarray) -> list[Window]:
        """Windows whose last frame is among the new ones, gathered from ring + new block."""
        old_end = self._n_frames
        new_end = old_end + new_logmel.shape[0]
        windows = []
        while (start := self._next_window_start()) + self.window_frames <= new_end:
            end = start + self.window_frames
            n_old = max(0, old_end - start)
            out = np.empty((self.window_frames, N_MELS), dtype=np.float32)
            energy = np.empty(self.window_frames, dtype=np.float64)
            _ring_copy(self._logmel, start, n_old, out)
            _ring_copy(self._energy, start, n_old, energy)
            lo = max(start, old_end) - old_end
            out[n_old:] = new_logmel[lo : end - old_end]
            energy[n_old:] = new_energy[lo : end - old_end]
            windows.append(
                Window(
                    index=self._n_windows,
                    start_frame=start,
                    frames=out,
                    t_start_s=start * HOP_LENGTH / SAMPLE_RATE_HZ,
                    t_end_s=end * HOP_LENGTH / SAMPLE_RATE_HZ,
                    level_dbfs=level_dbfs(float(energy.sum()) / (self.window_frames * HOP_LENGTH)),
                    arrival=self._arrival,
                )
            )
            self._n_windows += 1
            self._windows_since_reset += 1
        return windows

    def _next_window_start(self) -> int:
        return self._origin + self.phase_frames + self._windows_since_reset * self.hop_frames


def load_mono_16k(path: str | Path) -> np.ndarray:
    """librosa.load(path, sr=16000) without librosa: float32 ``[ceil(n·16000/sr)]``.

    soundfile float32 read, channel mean, soxr HQ, length fixed as librosa fixes it.
    """
    from streamclf.audio.files import read_audio_file
    from streamclf.audio.resample import Resampler, resampled_length

    audio, rate = read_audio_file(path)
    resampler = Resampler(rate, audio.shape[1], mix="mean")
    y = np.concatenate((resampler.push(audio), resampler.flush()))
    n = resampled_length(audio.shape[0], in_rate=rate)
    if y.shape[0] < n:
        y = np.concatenate((y, np.zeros(n - y.shape[0], dtype=np.float32)))
    return y[:n]


def _file_blocks(path: str | Path, block_frames: int) -> tuple[int, int, Iterator[np.ndarray]]:
    """(rate, channels, float32 ``[n, channels]`` blocks) of a file, read a block at a time.

    What soundfile cannot open goes to ``read_audio_file``: ffmpeg decodes it whole, or its
    one-line error is raised.
    """
    import soundfile as sf

    from streamclf.audio.files import read_audio_file

    try:
        sound = sf.SoundFile(path)
    except (RuntimeError, sf.SoundFileError, ValueError, OSError):
        audio, rate = read_audio_file(path)
        blocks = (audio[i : i + block_frames] for i in range(0, audio.shape[0], block_frames))
        return rate, audio.shape[1], blocks
    return sound.samplerate, sound.channels, _read_blocks(sound, path, block_frames)


def _read_blocks(sound, path: str | Path, block_frames: int) -> Iterator[np.ndarray]:
    import soundfile as sf

    with sound:
        while True:
            try:
                block = sound.read(block_frames, dtype="float32", always_2d=True)
            except (RuntimeError, sf.SoundFileError) as exc:
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                msg = f"cannot read audio file {path}: {first_line}"
                raise AudioInputError(msg) from exc
            if block.shape[0] == 0:
                return
            yield block


def stream_file_windows(
    path: str | Path,
    *,
    window_frames: int = WINDOW_FRAMES,
    hop_frames: int = WINDOW_FRAMES,
    block_frames: int = FILE_BLOCK_FRAMES,
) -> Iterator[Window]:
    """Exactly musicnn's input for a file (``librosa.load``, frame, flush), read, resampled and
    framed a block at a time, so that memory stays that of one block whatever the file's length.

    Default hop = window gives musicnn's own non-overlapping 187-frame patches.
    """
    from streamclf.audio.resample import Resampler, resampled_length

    rate, channels, blocks = _file_blocks(path, block_frames)
    resampler = Resampler(rate, channels, mix="mean")
    framer = LogMelFramer(window_frames, hop_frames)
    n_in = n_out = 0
    for block in blocks:
        n_in += block.shape[0]
        y = resampler.push(block)
        n_out += y.shape[0]
        yield from framer.push(y)
    # librosa's length, ceil(n · 16000 / rate): soxr's held-back tail cut or zero-padded to it
    # (soxr holds back its filter delay, so the blocks never give more than that).
    missing = resampled_length(n_in, in_rate=rate) - n_out
    tail = np.zeros(missing, dtype=np.float32)
    held = resampler.flush()[:missing]
    tail[: held.shape[0]] = held
    yield from framer.push(tail)
    yield from framer.flush()


def logmel_windows_for_file(
    path: str | Path, *, window_frames: int = WINDOW_FRAMES, hop_frames: int = WINDOW_FRAMES
) -> list[Window]:
    """All of :func:`stream_file_windows` at once."""
    return list(stream_file_windows(path, window_frames=window_frames, hop_frames=hop_frames))
