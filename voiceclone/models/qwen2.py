"""Qwen2 decoder backbone (hidden states only) with a static KV cache and fused SDPA attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voiceclone.errors import ModelError
from voiceclone.models.attention import attention
from voiceclone.models.linear import Linear
from voiceclone.models.network import PinnedDtype


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

    @classmethod
    def from_hf(cls, config: dict) -> Qwen2Config:
        """Build from a Hugging Face Qwen2 `config.json` dict; refuse features this backbone does not implement."""
        if config.get("hidden_act", "silu") != "silu":
            raise ModelError(f"config.json: hidden_act {config['hidden_act']!r} is not supported (only silu)")
        if config.get("rope_scaling") is not None:
            raise ModelError("config.json: rope_scaling is not supported")
        if config.get("use_sliding_window", False):
            raise ModelError("config.json: use_sliding_window=true is not supported")
        try:
            built = cls(**{name: config[name] for name in cls.__dataclass_fields__})
        except KeyError as missing:
            raise ModelError(f"config.json: missing field {missing.args[0]!r}") from None
        if built.hidden_size % built.num_attention_heads or built.num_attention_heads % built.num_key_value_heads:
            raise ModelError("config.json: hidden_size / num_attention_heads / num_key_value_heads do not divide")
        if config.get("head_dim", built.head_dim) != built.head_dim:
            raise ModelError(f"config.json: head_dim {config['head_dim']} != hidden_size / num_attention_heads")
        return built


class KVCache(nn.Module):
    """Preallocated keys and values of every layer: (layers, slots, kv_heads, max_seq, head_dim)."""

    def __init__(self, config: Qwen2Config, slots: int, max_seq: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        shape = (config.num_hidden_layers, slots, config.num_key_value_heads, max_seq, config.head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("all_slots", torch.arange(slots, device=device)[:, None], persistent=False)

    @property
    def slots(self) -> int:
        return self.k.shape[1]

    @property
    def max_seq(self) -> int:
        return self.k.shape[3]

    def write(self, layer: int, slots: Tensor | None, input_pos: Tensor, k: Tensor, v: Tensor) -> None:
        """Store k, v (B, kv_heads, T, D) of `slots` (B,) (None: the first B slots, in order) at positions (B, T)."""
        rows = self.all_slots[: k.shape[0]] if slots is None else slots[:, None]
        self.k[layer][rows, :, input_pos] = k.transpose(1, 2)
        self.v[layer][rows, :, input_pos] = v.transpose(1, 2)


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, scaled by a learned weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        normed = F.rms_norm(x.float(), self.weight.shape, eps=self.eps)
        return self.weight * normed.to(x.dtype)


class RotaryEmbedding(PinnedDtype):
    """Rotary frequencies in float32 (as HF computes them, on the CPU), whatever dtype the backbone runs in."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        dim = config.head_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
        self.register_buffer("inv_freq", 1.0 / (config.rope_theta**exponents), persistent=False)

    def forward(self, input_pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin (B, T, head_dim) for per-row positions (B, T), split-half layout."""
        freqs = input_pos[..., None].float() * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, heads, T, D) by the angles of (B, T, D): x*cos + rotate_half(x)*sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Attention of q (B, H, T, D) on k/v with fewer heads, never repeating K/V.

    Single-query steps fold each head group onto the query axis (every backend then applies);
    longer queries use SDPA's native `enable_gqa`.
    """
    batch, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    if heads == kv_heads:
        return attention(q, k, v, mask)
    if length == 1:
        return attention(q.view(batch, kv_heads, heads // kv_heads, dim), k, v, mask).view(batch, heads, 1, dim)
    return attention(q, k, v, mask, enable_gqa=True)


class Attention(nn.Module):
    """Multi-head attention with q/k/v biases, no output bias, rotary positions and grouped K/V heads."""

    def __init__(self, config: Qwen2Config, layer: int):
        super().__init__()
        self.layer = layer
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = Linear(config.hidden_size, self.heads * self.head_dim)
        self.k_proj = Linear(config.hidden_size, self.kv_heads * self.head_dim)
        self.v_proj = Linear(config.hidden_size, self.kv_heads * self.head_dim)
        self.o_proj = Linear(self.heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        input_pos: Tensor,
        mask: Tensor,
        cache: KVCache | None,
        slots: Tensor | None,
    ) -> Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            cache.write(self.layer, slots, input_pos, k, v)
            if slots is None:
                k = cache.k[self.layer][:batch, :, : mask.shape[-1]]
                v = cache.v[self.layer][:batch, :, : mask.shape[-1]]
        out = grouped_attention(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim))


class MLP(nn.Module):
    """SiLU-gated feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: Qwen2Config, layer: int):
        super().__init__()
        self.self_attn = Attention(config, layer)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, input_pos, mask, cache, slots) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, input_pos, mask, cache, slots)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2(nn.Module):
    """Token embedding, decoder layers and final norm; returns hidden states (no LM head)."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(
        self,
        embeds: Tensor,
        input_pos: Tensor,
        mask: Tensor,
        cache: KVCache | None = None,
        slots: Tensor | None = None,
    ) -> Tensor:
        """Final-normed hidden states (B, T, H) of input embeddings (B, T, H) at positions (B, T).

        `mask` is boolean (B, 1, T, S), True = may attend. Without a cache, or with `slots` (rows whose prefix
        starts at position 0, written into those cache slots), the T inputs attend to themselves (S = T).
        With a cache and `slots=None` the batch is the cache's first B slots in order, attending to their first S
        keys.
        """
        cos, sin = self.rotary_emb(input_pos, embeds.dtype)
        x = embeds
        for layer in self.layers:
            x = layer(x, cos, sin, input_pos, mask, cache, slots)
        return self.norm(x)
