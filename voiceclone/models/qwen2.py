"""Qwen2 decoder backbone (hidden states only) with a static KV cache and fused SDPA attention."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Qwen2Config:
    """Qwen2 hyper-parameters, read from `CosyVoice-BlankEN/config.json`."""

    vocab_size: int = 151936
    hidden_size: int = 896
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    intermediate_size: int = 4864
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
