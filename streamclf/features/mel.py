"""Pure numpy log-mel DSP, equal to musicnn's librosa 0.10.2.post1 front end.

musicnn computes ``melspectrogram(sr=16000, n_fft=512, hop_length=256, n_mels=96)`` with
librosa's defaults (periodic Hann, ``center=True`` with zero padding, power 2, Slaney mel scale
and norm, fmin 0, fmax 8000), casts it to float16 and applies ``log10(10000 x + 1)``. These
functions rebuild that without librosa, framed so that a streamer can feed them only new frames.
"""

from __future__ import annotations

import functools

import numpy as np

from streamclf.audio import SAMPLE_RATE_HZ

N_FFT = 512
HOP_LENGTH = 256
N_MELS = 96
WINDOW_FRAMES = 187
FMAX_HZ = SAMPLE_RATE_HZ / 2

# Slaney's mel scale: linear below 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = np.log(6.4) / 27.0


def frames_for_seconds(seconds: float) -> int:
    """Seconds → whole STFT frames (3 s → 187, 1 s → 62), the contract's one conversion."""
    return int(seconds * SAMPLE_RATE_HZ / HOP_LENGTH)


def n_frames_centered(n_samples: int, *, hop_length: int = HOP_LENGTH) -> int:
    """Frames librosa's centred STFT gives for ``n_samples`` (1876 for 30 s at 16 kHz)."""
    return 1 + n_samples // hop_length


def hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Hz → Slaney mel (librosa ``hz_to_mel(htk=False)``); float64 like librosa."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _SLANEY_HZ_PER_MEL
    log = _SLANEY_BREAK_MEL + np.log(np.maximum(hz, _SLANEY_BREAK_HZ) / _SLANEY_BREAK_HZ) / (
        _SLANEY_LOG_STEP
    )
    return np.where(hz >= _SLANEY_BREAK_HZ, log, linear)


def mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    """Slaney mel → Hz, the inverse of :func:`hz_to_mel_slaney`."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _SLANEY_HZ_PER_MEL
    log = _SLANEY_BREAK_HZ * np.exp(
        _SLANEY_LOG_STEP * (np.maximum(mel, _SLANEY_BREAK_MEL) - _SLANEY_BREAK_MEL)
    )
    return np.where(mel >= _SLANEY_BREAK_MEL, log, linear)


@functools.cache
def _mel_filterbank_cached(sr: int, n_fft: int, n_mels: int, fmin_hz: float, fmax_hz: float):
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    edges_hz = mel_to_hz_slaney(
        np.linspace(hz_to_mel_slaney(fmin_hz), hz_to_mel_slaney(fmax_hz), n_mels + 2)
    )
    widths_hz = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths_hz[:-1, None]
    falling = ramps[2:] / widths_hz[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney norm: each triangle has unit area in Hz, so bands are comparable across widths.
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def mel_filterbank(
    *,
    sr: int = SAMPLE_RATE_HZ,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    fmin_hz: float = 0.0,
    fmax_hz: float | None = None,
) -> np.ndarray:
    """Slaney-normalised triangular mel filters, equal to ``librosa.filters.mel`` defaults.

    Returns float32 ``[n_mels, 1 + n_fft // 2]`` (read-only, cached per argument set).
    """
    fmax = float(sr) / 2 if fmax_hz is None else float(fmax_hz)
    return _mel_filterbank_cached(int(sr), int(n_fft), int(n_mels), float(fmin_hz), fmax)


@functools.cache
def hann_periodic(n_fft: int = N_FFT) -> np.ndarray:
    """Periodic Hann window (``scipy.signal.get_window('hann', n, fftbins=True)``), float64
    ``[n_fft]``."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    window.flags.writeable = False
    return window


def sliding_rows(x: np.ndarray, width: int, step: int = 1) -> np.ndarray:
    """Runs of ``width`` consecutive rows of ``x``, ``step`` rows apart, as a read-only view:
    ``x[n, ...]`` → ``[(n - width) // step + 1, width, ...]``, no copy.

    Built on ``x``'s own buffer rather than with numpy's ``stride_tricks``: those read
    ``__array_interface__``, whose dict CPython fills with freshly interned keys, and on the hot
    path (every block, every window) the churn of the interned-string table grew the daemon's
    memory in steps of ~1.6 MiB (docs/reliability.md).
    """
    x = np.ascontiguousarray(x)
    n = max(0, (x.shape[0] - width) // step + 1)
    view = np.ndarray((n, width, *x.shape[1:]), x.dtype, buffer=x,
                      strides=(step * x.strides[0], *x.strides))
    view.flags.writeable = False
    return view


def frame_signal(x: np.ndarray, *, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> np.ndarray:
    """Every full frame of ``x`` as a strided view: ``x[n]`` → ``[n_frames, n_fft]``, no copy.

    Frame ``i`` is ``x[i*hop : i*hop + n_fft]``; a tail shorter than a frame is left out.
    """
    return sliding_rows(x, n_fft, hop_length)


def power_spectrum(frames: np.ndarray, *, n_fft: int = N_FFT) -> np.ndarray:
    """|rfft(hann · frame)|² per frame: ``[n_frames, n_fft]`` → float32
    ``[n_frames, 1 + n_fft//2]``.

    The FFT runs in float64 as librosa's does (its float64 window promotes the frames); the
    complex64 storage librosa then uses is reproduced by the cast before squaring.
    """
    spectrum = np.fft.rfft(frames * hann_periodic(n_fft), axis=-1).astype(np.complex64)
    return (spectrum.real**2 + spectrum.imag**2).astype(np.float32)


def mel_power(power: np.ndarray, *, filterbank: np.ndarray | None = None) -> np.ndarray:
    """Power spectra → mel power: ``[n_frames, n_bins]`` → float32 ``[n_frames, n_mels]``.

    One product per frame (a stack of ``[1, n_bins]`` matrices): a single 2-D matmul rounds
    differently depending on how many rows BLAS gets, and streaming must equal offline exactly.
    """
    bank = mel_filterbank() if filterbank is None else filterbank
    return (power[:, None, :] @ bank.T)[:, 0]


def compress(mel: np.ndarray) -> np.ndarray:
    """musicnn's compression: float16 cast, then ``log10(10000 x + 1)`` in float32.

    The float16 cast only quantises (as under NumPy 1.x); doing the product in float16, as NumPy 2
    would with musicnn's own line, overflows to inf for loud music. Shape is kept; float32 out.
    """
    quantised = mel.astype(np.float16).astype(np.float32)
    return np.log10(np.float32(10000.0) * quantised + np.float32(1.0))


def melspectrogram(y: np.ndarray) -> np.ndarray:
    """Offline reference: float32 ``y[n]`` at 16 kHz → mel power float32 ``[1 + n//256, 96]``.

    librosa's ``center=True, pad_mode='constant'``: ``n_fft // 2`` zeros on each side.
    """
    pad = N_FFT // 2
    padded = np.zeros(y.shape[0] + 2 * pad, dtype=np.float32)
    padded[pad : pad + y.shape[0]] = y
    return mel_power(power_spectrum(frame_signal(padded)))


def logmel(y: np.ndarray) -> np.ndarray:
    """Offline musicnn input: float32 ``y[n]`` at 16 kHz → float32 ``[1 + n//256, 96]``."""
    return compress(melspectrogram(y))
