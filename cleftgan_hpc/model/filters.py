"""FIR filter design: Kaiser-windowed sinc (1-D) and jinc (radial 2-D) low-pass filters.

Written from the textbook formulas (Kaiser 1974; the firwin convention of a DC gain of 1),
so no scipy is needed. The official pickles store their filters as buffers; these are only
used for freshly built networks.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def kaiser_atten(numtaps: int, width: float) -> float:
    """Attenuation (dB) of a Kaiser FIR filter with `numtaps` taps and transition `width` (fraction of Nyquist)."""
    return 2.285 * (numtaps - 1) * math.pi * width + 7.95


def kaiser_beta(atten: float) -> float:
    """Kaiser window beta giving stop-band attenuation `atten` dB."""
    if atten > 50:
        return 0.1102 * (atten - 8.7)
    if atten > 21:
        return 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21)
    return 0.0


def firwin_lowpass(numtaps: int, cutoff: float, width: float, fs: float) -> np.ndarray:
    """Windowed-sinc low-pass, DC gain 1; equals scipy.signal.firwin(numtaps, cutoff, width=width, fs=fs)."""
    nyq = fs / 2
    c = cutoff / nyq
    beta = kaiser_beta(kaiser_atten(numtaps, width / nyq))
    m = np.arange(numtaps) - (numtaps - 1) / 2
    h = c * np.sinc(c * m) * np.kaiser(numtaps, beta)
    return h / h.sum()


def bessel_j1(x: np.ndarray) -> np.ndarray:
    """Bessel function of the first kind, order 1 (torch's implementation, float64)."""
    return torch.special.bessel_j1(torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()


def jinc_lowpass(numtaps: int, cutoff: float, width: float, fs: float) -> np.ndarray:
    """Radially symmetric [numtaps, numtaps] low-pass: jinc times a separable Kaiser window, DC gain 1."""
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    with np.errstate(invalid="ignore", divide="ignore"):
        f = bessel_j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    f = np.where(r == 0, cutoff, f)  # limit of J1(2 pi c r) / (pi r) at r = 0
    beta = kaiser_beta(kaiser_atten(numtaps, width / (fs / 2)))
    w = np.kaiser(numtaps, beta)
    f = f * np.outer(w, w)
    return f / f.sum()


def design_lowpass_filter(
    numtaps: int,  # filter length; 1 means no filter
    cutoff: float,  # cutoff frequency (same unit as fs)
    width: float,  # transition band width
    fs: float,  # sampling rate
    radial: bool = False,  # True: 2-D radially symmetric (jinc) filter
) -> torch.Tensor | None:
    """The StyleGAN3 low-pass filter for given parameters, float32; None when numtaps == 1."""
    if numtaps < 1:
        raise ValueError("numtaps must be >= 1")
    if numtaps == 1:
        return None
    f = jinc_lowpass(numtaps, cutoff, width, fs) if radial else firwin_lowpass(numtaps, cutoff, width, fs)
    return torch.as_tensor(f, dtype=torch.float32)


def setup_resample_filter(taps: list[float] | tuple[float, ...]) -> torch.Tensor:
    """The StyleGAN2 resampling filter: outer product of `taps` with itself, normalised to sum 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()
