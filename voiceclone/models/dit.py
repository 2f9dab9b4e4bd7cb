"""Diffusion transformer (DiT) velocity estimator of the CosyVoice3 flow."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from voiceclone.models.attention import attention
from voiceclone.models.linear import Linear
from voiceclone.models.network import PinnedDtype

TIME_FREQ_DIM = 256  # width of the sinusoidal time features
TIME_SCALE = 1000.0  # flow time t in [0, 1] is scaled by this before the sinusoid
CONV_POS_KERNEL = 31
CONV_POS_GROUPS = 16
NORM_EPS = 1e-6
BF16_PACKED = (torch.bfloat16,)  # float32 stays on ATen's GEMM (the parity-tested path); bfloat16 packs its weights


def projection(in_features: int, out_features: int, tanh_gelu: bool = False) -> Linear:
    """A linear layer run once per frame and solver step: packed oneDNN weights in bfloat16 on the CPU."""
    return Linear(in_features, out_features, pack_dtypes=BF16_PACKED, tanh_gelu=tanh_gelu)


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


class TimestepEmbedding(nn.Module):
    """Sinusoid of the scaled flow time, then Linear -> SiLU -> Linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = TIME_FREQ_DIM // 2
        step = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device).float() * -step)
        args = TIME_SCALE * t.float().reshape(-1, 1) * freqs.unsqueeze(0)
        features = torch.cat((args.sin(), args.cos()), dim=-1)
        return self.time_mlp(features.to(self.time_mlp[0].weight.dtype))


class CausalConvPositionEmbedding(nn.Module):
    """Two left-padded grouped convolutions with Mish: a causal, relative position signal."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(dim, dim, CONV_POS_KERNEL, groups=CONV_POS_GROUPS), nn.Mish())
        self.conv2 = nn.Sequential(nn.Conv1d(dim, dim, CONV_POS_KERNEL, groups=CONV_POS_GROUPS), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        h = self.conv1(F.pad(h, (CONV_POS_KERNEL - 1, 0)))
        h = self.conv2(F.pad(h, (CONV_POS_KERNEL - 1, 0)))
        return h.transpose(1, 2)


class InputEmbedding(nn.Module):
    """Projects [x, cond, mu, spks] to the model width and adds the causal conv position embedding."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        in_dim = 2 * config.mel_dim + config.mu_dim + config.spk_dim
        self.proj = projection(in_dim, config.dim)
        self.conv_pos_embed = CausalConvPositionEmbedding(config.dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor) -> torch.Tensor:
        spks = spks.unsqueeze(1).expand(-1, x.shape[1], -1)
        h = self.proj(torch.cat((x, cond, mu, spks), dim=-1))
        return h + self.conv_pos_embed(h)  # h first: the sum keeps h's time-major layout


class RotaryEmbedding(PinnedDtype):
    """x-transformers rotary table, float32 whatever the model's dtype: interleaved frequency pairs over the first
    `2 * len(inv_freq)` channels."""

    def __init__(self, dim_head: int):
        super().__init__()
        exponents = torch.arange(0, dim_head, 2).float() / dim_head
        self.register_buffer("inv_freq", 10000.0**-exponents)  # in flow.pt: assigned when loaded

    def cos_sin(self, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin tables (frames, rot_dim), float32; pair (a, b) turns into (a c - b s, b c + a s)."""
        positions = torch.arange(frames, device=self.inv_freq.device, dtype=torch.float32)
        angles = torch.outer(positions, self.inv_freq).repeat_interleave(2, dim=-1)
        sign = torch.arange(angles.shape[-1], device=angles.device) % 2 * 2 - 1  # -1, +1, -1, ...
        return angles.cos(), angles.sin() * sign


def rotate_qk(qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> None:
    """Rotate, in place, the first rot_dim channels of the projected q and k (before the head split)."""
    batch, frames, _ = qkv.shape
    qk = qkv.view(batch, frames, 3, -1)[:, :, :2, : cos.shape[-1]]
    swapped = qk.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (a, b) -> (b, a)
    qk.copy_(torch.addcmul(qk * cos.unsqueeze(1), swapped, signed_sin.unsqueeze(1)))  # in float32


class Attention(nn.Module):
    """Multi-head self-attention with fused q/k/v projection (all with biases) and rotary on q/k."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.heads, self.dim_head = config.heads, config.dim_head
        inner = config.heads * config.dim_head
        self.qkv = projection(config.dim, 3 * inner)
        self.to_out = projection(inner, config.dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None):
        batch, frames, _ = x.shape
        qkv = self.qkv(x)
        rotate_qk(qkv, *rope)
        q, k, v = qkv.view(batch, frames, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(batch, frames, -1))


class FeedForward(nn.Module):
    """Linear -> tanh-GELU -> Linear (the GELU fused into the first GEMM where its weights are packed)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = projection(dim, hidden, tanh_gelu=True)
        self.fc2 = projection(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


class AdaLayerNormZero(nn.Module):
    """Per time (S, 6, dim) from SiLU(time embedding): shift, 1 + scale, gate for attention, then for the MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, silu_t: torch.Tensor) -> torch.Tensor:
        modulation = self.linear(silu_t).view(len(silu_t), 2, 3, -1)
        modulation[:, :, 1].add_(1)  # the scales become LayerNorm weights
        return modulation.flatten(1, 2)


class AdaLayerNormZeroFinal(nn.Module):
    """Per time (S, 2, dim) from SiLU(time embedding), in the reference's order: 1 + scale, shift."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, silu_t: torch.Tensor) -> torch.Tensor:
        modulation = self.linear(silu_t).view(len(silu_t), 2, -1)
        modulation[:, 0].add_(1)
        return modulation


def modulated_norm(x: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """LayerNorm(x) * (1 + scale) + shift as one kernel: the modulation, shared by every row, is the LN affine."""
    return F.layer_norm(x, x.shape[-1:], weight=weight, bias=shift, eps=NORM_EPS)


class DiTBlock(nn.Module):
    """AdaLayerNormZero-modulated attention and feed-forward, each with a gated residual."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.attn_norm = AdaLayerNormZero(config.dim)
        self.attn = Attention(config)
        self.ff = FeedForward(config.dim, config.dim * config.ff_mult)

    def forward(self, x, modulation, rope, mask):
        shift_msa, weight_msa, gate_msa, shift_mlp, weight_mlp, gate_mlp = modulation.unbind(0)
        x = x.addcmul_(self.attn(modulated_norm(x, weight_msa, shift_msa), rope, mask), gate_msa)
        return x.addcmul_(self.ff(modulated_norm(x, weight_mlp, shift_mlp)), gate_mlp)


class DiT(nn.Module):
    """Velocity estimator v(x, t | mu, spks, cond) on time-major (N, T, 80) tensors.

    One flow time is shared by every row of a call (the solver steps all rows together), so the
    AdaLayerNorm modulations are vectors and fold into the LayerNorm affine; they depend on the time
    only, and `modulations` computes them for all solver steps at once. Frames beyond a row's end
    (mask False) are masked as keys; the conv position embedding is causal, so they never reach valid
    frames and their outputs are left as they come (the caller drops them).
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        self.time_embed = TimestepEmbedding(config.dim)
        self.input_embed = InputEmbedding(config)
        self.rotary_embed = RotaryEmbedding(config.dim_head)
        self.transformer_blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.norm_out = AdaLayerNormZeroFinal(config.dim)
        self.proj_out = projection(config.dim, config.out_channels)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        mu: torch.Tensor,
        modulation: list[torch.Tensor],
        spks: torch.Tensor,
        cond: torch.Tensor,
        streaming: bool = False,
    ) -> torch.Tensor:
        """x, mu, cond (N, T, 80); spks (N, 80); mask (N, T) bool or None (all valid);
        `modulation`: one time's entry of `modulations` ((6, dim) per block, then (2, dim))."""
        h = self.input_embed(x, cond, mu, spks)
        rope = self.rotary_embed.cos_sin(h.shape[1])
        attn_mask = self.attention_mask(mask, h.shape[1], h.device, streaming)
        *block_modulations, out_modulation = modulation
        for block, block_modulation in zip(self.transformer_blocks, block_modulations, strict=True):
            h = block(h, block_modulation, rope, attn_mask)
        weight, shift = out_modulation.unbind(0)
        return self.proj_out(modulated_norm(h, weight, shift))

    def modulations(self, t: torch.Tensor) -> list[torch.Tensor]:
        """AdaLayerNorm vectors for the flow times `t` (S,): (S, 6, dim) per block, then (S, 2, dim) for the output.

        One GEMM per block for all S times instead of a weight-bound GEMV per block and estimator call."""
        silu_t = F.silu(self.time_embed(t))
        return [block.attn_norm(silu_t) for block in self.transformer_blocks] + [self.norm_out(silu_t)]

    def attention_mask(
        self, mask: torch.Tensor | None, frames: int, device: torch.device, streaming: bool
    ) -> torch.Tensor | None:
        """Boolean SDPA mask: key padding, plus the static chunk mask when streaming (None: attend to all)."""
        if streaming:
            chunk = torch.arange(frames, device=device) // self.config.static_chunk_size
            visible = chunk.unsqueeze(0) <= chunk.unsqueeze(1)
            return visible if mask is None else visible & mask[:, None, None, :]
        return None if mask is None else mask[:, None, None, :]

    def flops(self, frames: int, batch: int) -> int:
        """Matmul FLOPs of one call on `batch` rows of `frames` frames (linears, convs, attention; 2 per MAC).

        The time conditioning (`modulations`) is computed once per solve and not counted."""
        c = self.config
        inner, hidden = c.heads * c.dim_head, c.dim * c.ff_mult
        rows = batch * frames
        per_row_macs = (2 * c.mel_dim + c.mu_dim + c.spk_dim) * c.dim  # input projection
        per_row_macs += 2 * c.dim * (c.dim // CONV_POS_GROUPS) * CONV_POS_KERNEL  # conv position embedding
        per_row_macs += c.depth * (c.dim * 3 * inner + inner * c.dim + 2 * c.dim * hidden)
        per_row_macs += c.dim * c.out_channels
        attention_macs = c.depth * batch * 2 * frames * frames * inner
        return 2 * (rows * per_row_macs + attention_macs)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict under the reference's key names (q/k/v split, `to_out.0`, `ff.ff.0.0` / `ff.ff.2`)."""
        official = {}
        state = self.state_dict()
        for name, tensor in state.items():
            block, _, rest = name.partition(".attn.qkv.")
            if rest == "weight":  # the reference order: to_q.weight, to_q.bias, to_k.weight, ...
                biases = state[f"{block}.attn.qkv.bias"].chunk(3)
                for part, weight, bias in zip(_QKV, tensor.chunk(3), biases, strict=True):
                    official[f"{block}.attn.{part}.weight"] = weight
                    official[f"{block}.attn.{part}.bias"] = bias
            if rest:
                continue
            for ours, theirs in _RENAMES:
                name = name.replace(ours, theirs)
            official[name] = tensor
        return official

    def state_dict_from_official(self, official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inverse of `official_state_dict` (keys already checked by the caller)."""
        ours = {}
        for name in self.state_dict():
            block, _, rest = name.partition(".attn.qkv.")
            if rest:
                ours[name] = torch.cat([official[f"{block}.attn.{part}.{rest}"] for part in _QKV])
                continue
            theirs = name
            for a, b in _RENAMES:
                theirs = theirs.replace(a, b)
            ours[name] = official[theirs]
        return ours


_QKV = ("to_q", "to_k", "to_v")
_RENAMES = ((".attn.to_out.", ".attn.to_out.0."), (".ff.fc1.", ".ff.ff.0.0."), (".ff.fc2.", ".ff.ff.2."))
