"""CosyVoice2 flow encoder: conformer layers with relative-position attention, x2 upsampling, chunk masks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voiceclone.models.attention import attention
from voiceclone.models.flow import PreLookaheadLayer

NORM_EPS = 1e-5


@dataclass
class ConformerConfig:
    """UpsampleConformerEncoder settings from the yaml `flow.encoder:` block.

    The reference hard-codes the 512-wide pre-lookahead layer and upsampler, 4 layers after the upsampler, the
    3-token lookahead and the x2 stride; only heads, FFN width and `num_blocks` are free.
    """

    input_size: int = 512
    output_size: int = 512
    attention_heads: int = 8
    linear_units: int = 2048
    num_blocks: int = 6
    num_up_blocks: int = 4
    pre_lookahead_len: int = 3
    upsample_stride: int = 2
    static_chunk_size: int = 25


def relative_positions(frames: int, dim: int, device: torch.device) -> Tensor:
    """ESPnet's sinusoid table (2T-1, dim) for relative distances T-1, T-2, ..., -(T-1), float32.

    Row r holds sin/cos (interleaved) of distance (T-1-r) times 10000^(-2k/dim), computed as the reference does.
    """
    positions = torch.arange(frames, dtype=torch.float32, device=device).unsqueeze(1)
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim))
    ahead, behind = positions * freqs, -1 * positions * freqs
    table = torch.empty(2 * frames - 1, dim, device=device)
    table[:frames, 0::2] = ahead.sin().flip(0)
    table[:frames, 1::2] = ahead.cos().flip(0)
    table[frames:, 0::2] = behind[1:].sin()
    table[frames:, 1::2] = behind[1:].cos()
    return table


class LinearEmbedding(nn.Module):
    """Linear -> LayerNorm, scaled by sqrt(width) (LinearNoSubsampling with its relative-position encoding)."""

    def __init__(self, channels_in: int, channels: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(channels_in, channels), nn.LayerNorm(channels, eps=NORM_EPS))
        self.scale = math.sqrt(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(x) * self.scale


class RelPositionAttention(nn.Module):
    """Transformer-XL style attention: scores ((q+u) k^T + shift((q+v) P^T)) / sqrt(d) with P = linear_pos(table).

    The content term goes through the one SDPA call; the position term depends on (query, key) pairs, so it
    enters SDPA as an additive float mask (pre-scaled by 1/sqrt(d)) together with the key mask.
    """

    def __init__(self, heads: int, channels: int):
        super().__init__()
        self.heads, self.dim_head = heads, channels // heads
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.dim_head))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.dim_head))
        self.linear_q = nn.Linear(channels, channels)
        self.linear_k = nn.Linear(channels, channels)
        self.linear_v = nn.Linear(channels, channels)
        self.linear_out = nn.Linear(channels, channels)
        self.linear_pos = nn.Linear(channels, channels, bias=False)

    def forward(self, x: Tensor, table: Tensor, visible: Tensor | None) -> Tensor:
        """x (B, T, C); table (2T-1, C) from `relative_positions`; visible: bool, broadcastable to (B, 1, T, T)."""
        batch, frames, _ = x.shape
        heads = (batch, frames, self.heads, self.dim_head)
        q = self.linear_q(x).view(heads)
        k = self.linear_k(x).view(heads).transpose(1, 2)
        v = self.linear_v(x).view(heads).transpose(1, 2)
        p = self.linear_pos(table.to(x.dtype)).view(-1, self.heads, self.dim_head).transpose(0, 1)
        position = ((q + self.pos_bias_v).transpose(1, 2) @ p.transpose(1, 2)).contiguous()  # (B, H, T, 2T-1)
        # element (i, j) of the shifted term is column T-1-i+j of row i: a strided view of the same storage
        strides = position.stride()
        position = position.as_strided(
            (batch, self.heads, frames, frames),
            (*strides[:2], strides[2] - 1, 1),
            position.storage_offset() + frames - 1,
        )
        bias = position / math.sqrt(self.dim_head)
        if visible is not None:
            bias = bias.masked_fill(~visible, -float("inf"))
        out = attention((q + self.pos_bias_u).transpose(1, 2), k, v, mask=bias)
        return self.linear_out(out.transpose(1, 2).reshape(batch, frames, -1))


class FeedForward(nn.Module):
    """Linear -> SiLU -> Linear."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(channels, hidden)
        self.w_2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-norm residual attention, then pre-norm residual feed-forward (no macaron, no conv module)."""

    def __init__(self, config: ConformerConfig):
        super().__init__()
        width = config.output_size
        self.self_attn = RelPositionAttention(config.attention_heads, width)
        self.feed_forward = FeedForward(width, config.linear_units)
        self.norm_ff = nn.LayerNorm(width, eps=NORM_EPS)
        self.norm_mha = nn.LayerNorm(width, eps=NORM_EPS)

    def forward(self, x: Tensor, table: Tensor, visible: Tensor | None) -> Tensor:
        x = x + self.self_attn(self.norm_mha(x), table, visible)
        return x + self.feed_forward(self.norm_ff(x))


class Upsample(nn.Module):
    """Nearest-neighbour upsampling along time, then a left-causal conv of kernel 2 * stride + 1."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, 2 * stride + 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, stride * T, C)."""
        h = x.transpose(1, 2).repeat_interleave(self.stride, dim=2)
        return self.conv(F.pad(h, (2 * self.stride, 0))).transpose(1, 2)


class UpsampleConformerEncoder(nn.Module):
    """Token embeddings (B, T, 512) -> encoder states at the mel frame rate (B, stride * T, 512).

    Rows are padded: `lengths` counts each row's tokens (lookahead context included), `kept` the tokens that
    produce frames (the last `pre_lookahead_len` tokens of a non-final chunk only serve as lookahead). Padding is
    zeroed before the lookahead conv and masked as attention keys; the upsampling conv is causal, so padding never
    reaches a row's frames and every row equals its batch-1 result.
    """

    def __init__(self, config: ConformerConfig):
        super().__init__()
        self.config = config
        width = config.output_size
        # registration order = flow.pt's key order
        self.embed = LinearEmbedding(config.input_size, width)
        self.after_norm = nn.LayerNorm(width, eps=NORM_EPS)
        self.pre_lookahead_layer = PreLookaheadLayer(width, width, config.pre_lookahead_len)
        self.encoders = nn.ModuleList(ConformerLayer(config) for _ in range(config.num_blocks))
        self.up_layer = Upsample(width, config.upsample_stride)
        self.up_embed = LinearEmbedding(config.input_size, width)
        self.up_encoders = nn.ModuleList(ConformerLayer(config) for _ in range(config.num_up_blocks))

    def forward(self, x: Tensor, lengths: Tensor, kept: Tensor, streaming: bool = False) -> Tensor:
        """x (B, T, input_size) zero past `lengths`; returns (B, stride * max(kept), width)."""
        stride, device = self.config.upsample_stride, x.device
        positions = torch.arange(x.shape[1], device=device)
        h = self.embed(x) * (positions < lengths.unsqueeze(1)).unsqueeze(-1).to(x.dtype)
        h = self.pre_lookahead_layer(h)[:, : int(kept.max())]
        h = self._layers(self.encoders, h, kept, self.config.static_chunk_size, streaming)
        h = self.up_embed(self.up_layer(h))
        h = self._layers(self.up_encoders, h, stride * kept, stride * self.config.static_chunk_size, streaming)
        return self.after_norm(h)

    @staticmethod
    def _layers(layers: nn.ModuleList, h: Tensor, lengths: Tensor, chunk: int, streaming: bool) -> Tensor:
        frames = h.shape[1]
        table = relative_positions(frames, h.shape[-1], h.device)
        positions = torch.arange(frames, device=h.device)
        visible = (positions < lengths.unsqueeze(1))[:, None, None, :]  # (B, 1, 1, T): keys of each row
        if streaming:  # a frame sees its own chunk and every earlier one
            visible = visible & ((positions // chunk)[None, :] <= (positions // chunk)[:, None])
        elif bool(visible.all()):
            visible = None
        for layer in layers:
            h = layer(h, table, visible)
        return h
