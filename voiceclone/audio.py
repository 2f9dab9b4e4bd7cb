"""Audio in and out: wav I/O, resampling, and the prompt features (whisper log-mel, Kaldi fbank, mel)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MelConfig:
    """The yaml `feat_extractor:` block (Matcha-style mel of the flow prompt)."""

    n_fft: int = 1920
    num_mels: int = 80
    sampling_rate: int = 24000
    hop_size: int = 480
    win_size: int = 1920
    fmin: float = 0.0
    fmax: float | None = None
    center: bool = False
