"""CosyVoice3 token-to-mel flow: pre-lookahead conv, x2 repeat, conditional flow matching with a DiT."""

from __future__ import annotations

from dataclasses import dataclass, field

from voiceclone.models.dit import DiTConfig


@dataclass
class FlowConfig:
    """CausalMaskedDiffWithDiT settings from the yaml `flow:` block."""

    vocab_size: int = 6561
    input_size: int = 80
    output_size: int = 80
    spk_embed_dim: int = 192
    token_mel_ratio: int = 2
    pre_lookahead_len: int = 3
    pre_lookahead_channels: int = 1024
    n_timesteps: int = 10
    inference_cfg_rate: float = 0.7
    t_scheduler: str = "cosine"
    noise_frames: int = 15000
    dit: DiTConfig = field(default_factory=DiTConfig)
