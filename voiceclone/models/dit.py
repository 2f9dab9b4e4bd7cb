"""Diffusion transformer (DiT) velocity estimator of the CosyVoice3 flow."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DiTConfig:
    """DiT settings from the yaml `estimator:` block."""

    dim: int = 1024
    depth: int = 22
    heads: int = 16
    dim_head: int = 64
    ff_mult: int = 2
    mel_dim: int = 80
    mu_dim: int = 80
    spk_dim: int = 80
    out_channels: int = 80
    static_chunk_size: int = 50
