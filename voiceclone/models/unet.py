"""Causal U-Net velocity estimator of the CosyVoice2 flow (CausalConditionalDecoder, one level, no resampling)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voiceclone.models.attention import attention

TIME_SCALE = 1000.0  # flow time t in [0, 1] is scaled by this before the sinusoid
NORM_EPS = 1e-5


@dataclass
class UNetConfig:
    """CausalConditionalDecoder settings from the yaml `estimator:` block (a single `channels` level)."""

    in_channels: int = 320
    out_channels: int = 80
    channels: int = 256
    attention_head_dim: int = 64
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8
    static_chunk_size: int = 50

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.channels


class TimestepEmbedding(nn.Module):
    """Sinusoid of the scaled flow time (width `in_channels`), then Linear -> SiLU -> Linear."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.in_channels = in_channels
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t: Tensor) -> Tensor:
        half = self.in_channels // 2
        freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
        args = TIME_SCALE * t.float().reshape(-1, 1) * freqs.unsqueeze(0)
        features = torch.cat((args.sin(), args.cos()), dim=-1).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(features)))


class CausalConv1d(nn.Conv1d):
    """Conv1d over zeros left-padded by kernel_size - 1: frame t sees frames t - k + 1 .. t."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


class CausalBlock(nn.Module):
    """Masked causal conv (k3) -> LayerNorm over channels -> Mish, masked again."""

    def __init__(self, channels_in: int, channels: int):
        super().__init__()
        self.conv = CausalConv1d(channels_in, channels, 3)
        self.norm = nn.LayerNorm(channels, eps=NORM_EPS)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm(self.conv(x * mask).transpose(1, 2)).transpose(1, 2)
        return F.mish(h) * mask


class ResnetBlock(nn.Module):
    """Two causal blocks with the time embedding added between them, plus a 1x1 residual projection."""

    def __init__(self, channels_in: int, channels: int, time_dim: int):
        super().__init__()
        self.mlp = nn.Linear(time_dim, channels)
        self.block1 = CausalBlock(channels_in, channels)
        self.block2 = CausalBlock(channels, channels)
        self.res_conv = nn.Conv1d(channels_in, channels, 1)

    def forward(self, x: Tensor, mask: Tensor, time: Tensor) -> Tensor:
        """x (N, C_in, T), mask (N, 1, T), time embedding (1, time_dim) shared by every row."""
        h = self.block1(x, mask) + self.mlp(F.mish(time)).unsqueeze(-1)
        return self.block2(h, mask) + self.res_conv(x * mask)


class SelfAttention(nn.Module):
    """Multi-head attention with a fused bias-free q/k/v projection and a biased output projection."""

    def __init__(self, channels: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.qkv = nn.Linear(channels, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, channels)

    def forward(self, x: Tensor, visible: Tensor | None) -> Tensor:
        batch, frames, _ = x.shape
        q, k, v = self.qkv(x).view(batch, frames, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, mask=visible)
        return self.to_out(out.transpose(1, 2).reshape(batch, frames, -1))


class TransformerBlock(nn.Module):
    """Pre-norm residual self-attention, then pre-norm residual Linear -> GELU -> Linear."""

    def __init__(self, channels: int, heads: int, dim_head: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels, eps=NORM_EPS)
        self.attn1 = SelfAttention(channels, heads, dim_head)
        self.norm3 = nn.LayerNorm(channels, eps=NORM_EPS)
        self.fc1 = nn.Linear(channels, 4 * channels)
        self.fc2 = nn.Linear(4 * channels, channels)

    def forward(self, x: Tensor, visible: Tensor | None) -> Tensor:
        x = x + self.attn1(self.norm1(x), visible)
        return x + self.fc2(F.gelu(self.fc1(self.norm3(x))))


class CausalUNet(nn.Module):
    """Velocity estimator v(x, t | mu, spks, cond) on channel-first (N, 80, T) tensors.

    Every convolution is causal and every block re-applies the frame mask, so frames past a row's end never reach
    its valid frames; attention masks them as keys.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c, time_dim = config.channels, config.time_embed_dim
        self.time_mlp = TimestepEmbedding(config.in_channels, time_dim)
        self.down_blocks = nn.ModuleList([self._level(config.in_channels, time_dim, with_conv=True)])
        self.mid_blocks = nn.ModuleList(self._level(c, time_dim, with_conv=False) for _ in range(config.num_mid_blocks))
        self.up_blocks = nn.ModuleList([self._level(2 * c, time_dim, with_conv=True)])
        self.final_block = CausalBlock(c, c)
        self.final_proj = nn.Conv1d(c, config.out_channels, 1)

    def _level(self, channels_in: int, time_dim: int, with_conv: bool) -> nn.ModuleList:
        """[resnet, transformer blocks(, causal k3 conv)] at the level's width, as the reference nests them."""
        cfg = self.config
        blocks = nn.ModuleList(
            TransformerBlock(cfg.channels, cfg.num_heads, cfg.attention_head_dim) for _ in range(cfg.n_blocks)
        )
        level = nn.ModuleList([ResnetBlock(channels_in, cfg.channels, time_dim), blocks])
        if with_conv:
            level.append(CausalConv1d(cfg.channels, cfg.channels, 3))
        return level

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        mu: Tensor,
        t: Tensor,
        spks: Tensor,
        cond: Tensor,
        streaming: bool = False,
    ) -> Tensor:
        """x, mu, cond (N, 80, T); mask (N, T) bool; t () one flow time for all rows; spks (N, 80)."""
        time = self.time_mlp(t)
        visible = self.attention_mask(mask, streaming)
        mask = mask.unsqueeze(1).to(x.dtype)
        h = torch.cat((x, mu, spks.unsqueeze(-1).expand(-1, -1, x.shape[-1]), cond), dim=1)
        resnet, blocks, conv = self.down_blocks[0]
        h = self._transformers(blocks, resnet(h, mask, time), visible)
        skip = h
        h = conv(h * mask)
        for resnet, blocks in self.mid_blocks:
            h = self._transformers(blocks, resnet(h, mask, time), visible)
        resnet, blocks, conv = self.up_blocks[0]
        h = self._transformers(blocks, resnet(torch.cat((h, skip), dim=1), mask, time), visible)
        h = self.final_block(conv(h * mask), mask)
        return self.final_proj(h * mask) * mask

    def flops(self, frames: int, batch: int) -> int:
        """Matmul FLOPs of one call on `batch` rows of `frames` frames (linears, convs, attention; 2 per MAC),
        the time embedding included (one row per call, as `forward` computes it)."""
        c, cfg = self.config.channels, self.config
        inner, time_dim = cfg.num_heads * cfg.attention_head_dim, cfg.time_embed_dim

        def resnet(channels_in: int) -> int:  # two k3 causal convs and the 1x1 residual, per frame
            return 3 * channels_in * c + 3 * c * c + channels_in * c

        transformers = (2 + cfg.num_mid_blocks) * cfg.n_blocks
        per_frame = resnet(cfg.in_channels) + cfg.num_mid_blocks * resnet(c) + resnet(2 * c)
        per_frame += transformers * (3 * c * inner + inner * c + 8 * c * c)
        per_frame += 3 * (3 * c * c) + c * cfg.out_channels  # down / up k3 convs, final block, final 1x1 projection
        attention = transformers * batch * 2 * frames * frames * inner
        time = cfg.in_channels * time_dim + time_dim * time_dim + (2 + cfg.num_mid_blocks) * time_dim * c
        return 2 * (batch * frames * per_frame + attention + time)

    @staticmethod
    def _transformers(blocks: nn.ModuleList, h: Tensor, visible: Tensor | None) -> Tensor:
        h = h.transpose(1, 2)
        for block in blocks:
            h = block(h, visible)
        return h.transpose(1, 2)

    def attention_mask(self, mask: Tensor, streaming: bool) -> Tensor | None:
        """Boolean SDPA mask: key padding, plus the static chunk mask when streaming (None: attend to all)."""
        frames = mask.shape[1]
        if streaming:
            chunk = torch.arange(frames, device=mask.device) // self.config.static_chunk_size
            return (chunk.unsqueeze(0) <= chunk.unsqueeze(1)) & mask[:, None, None, :]
        return None if bool(mask.all()) else mask[:, None, None, :]

    def official_state_dict(self) -> dict[str, Tensor]:
        """The state dict under the reference's key names (q/k/v split, `mlp.1`, `block.0`/`block.2`, `ff.net`)."""
        official = {}
        for name, tensor in self.state_dict().items():
            if name.endswith(".attn1.qkv.weight"):
                block = name.removesuffix(".qkv.weight")
                for part, weight in zip(_QKV, tensor.chunk(3), strict=True):
                    official[f"{block}.{part}.weight"] = weight
                continue
            official[_official_name(name)] = tensor
        return official

    def state_dict_from_official(self, official: dict[str, Tensor]) -> dict[str, Tensor]:
        """The inverse of `official_state_dict` (keys already checked by the caller)."""
        ours = {}
        for name in self.state_dict():
            if name.endswith(".attn1.qkv.weight"):
                block = name.removesuffix(".qkv.weight")
                ours[name] = torch.cat([official[f"{block}.{part}.weight"] for part in _QKV])
            else:
                ours[name] = official[_official_name(name)]
        return ours


_QKV = ("to_q", "to_k", "to_v")
_RENAMES = (
    (".mlp.", ".mlp.1."),
    (".conv.", ".block.0."),
    (".norm.", ".block.2."),
    (".attn1.to_out.", ".attn1.to_out.0."),
    (".fc1.", ".ff.net.0.proj."),
    (".fc2.", ".ff.net.2."),
)


def _official_name(name: str) -> str:
    name = "." + name
    for ours, theirs in _RENAMES:
        name = name.replace(ours, theirs)
    return name[1:]
