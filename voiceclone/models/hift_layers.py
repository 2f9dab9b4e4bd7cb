"""Layers of the HiFT vocoders: padded and upsampling convolutions, Snake, residual blocks, the F0 predictor (float64
for CosyVoice3), and weight-norm folding."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from voiceclone.models.network import PinnedDtype

F0_LOOK_AHEAD = 3  # right-context frames of the F0 predictor's first conv (kernel 4)


class PaddedConv1d(nn.Conv1d):
    """Conv1d after zero padding `pad` = (left, right); `weight_normed` marks a weight-norm pair in hift.pt."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        pad: tuple[int, int],
        stride: int = 1,
        dilation: int = 1,
        weight_normed: bool = True,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, dtype=dtype)
        self.pad, self.weight_normed = pad, weight_normed

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pad))


class UpsampleConv1d(PaddedConv1d):
    """Nearest-neighbour upsampling by `factor`, then a left-causal conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, factor: int):
        super().__init__(in_channels, out_channels, kernel_size, pad=(kernel_size - 1, 0))
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.repeat_interleave(self.factor, dim=2))


class Snake(nn.Module):
    """x + 1/(alpha + 1e-9) * sin(alpha * x)^2 with a per-channel alpha (linear scale)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.alpha[:, None]
        return x + (1.0 / (alpha + 1e-9)) * torch.sin(x * alpha).pow(2)


class ResBlock(nn.Module):
    """For each dilation d: x = x + conv2(snake2(conv1_d(snake1(x)))), convs left-causal or (CosyVoice2) centred."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], causal: bool = True):
        super().__init__()
        k = kernel_size

        def pad(d: int) -> tuple[int, int]:
            return (d * (k - 1), 0) if causal else (d * (k - 1) // 2, d * (k - 1) // 2)

        self.convs1 = nn.ModuleList(PaddedConv1d(channels, channels, k, pad=pad(d), dilation=d) for d in dilations)
        self.convs2 = nn.ModuleList(PaddedConv1d(channels, channels, k, pad=pad(1)) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, C, T); `mask` (B, 1, T) zeroes every conv output past each row's end (x must be zero there)."""
        layers = zip(self.convs1, self.convs2, self.activations1, self.activations2, strict=True)
        for conv1, conv2, act1, act2 in layers:
            h = conv1(act1(x))
            h = conv2(act2(h if mask is None else h * mask))
            x = x + (h if mask is None else h * mask)
        return x


class F0Predictor(PinnedDtype):
    """CausalConvRNNF0Predictor: k4 conv with 3 frames of look-ahead, four left-causal k3 convs, ELU, Linear, abs.

    Not `causal` (CosyVoice2's ConvRNNF0Predictor): five centred k3 convs. Always in `dtype`, weights included:
    float64 for CosyVoice3 (the reference casts weight norm's g and v to float64 and folds them there), float32 for
    CosyVoice2 (its reference runs the vocoder in float32).
    """

    def __init__(self, in_channels: int, cond_channels: int, num_class: int, causal: bool = True, dtype=torch.float64):
        super().__init__()
        if causal:
            first = PaddedConv1d(in_channels, cond_channels, F0_LOOK_AHEAD + 1, pad=(0, F0_LOOK_AHEAD), dtype=dtype)
        else:
            first = PaddedConv1d(in_channels, cond_channels, 3, pad=(1, 1), dtype=dtype)
        layers: list[nn.Module] = [first, nn.ELU()]
        for _ in range(4):
            pad = (2, 0) if causal else (1, 1)
            layers += [PaddedConv1d(cond_channels, cond_channels, 3, pad=pad, dtype=dtype), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, num_class, dtype=dtype)

    def forward(self, mel: Tensor) -> Tensor:
        """(B, 80, T) -> F0 in Hz (B, T) in the predictor's dtype."""
        x = self.condnet(mel.to(self.classifier.weight.dtype)).transpose(1, 2)
        return self.classifier(x).squeeze(-1).abs()


def fold_weight_norm(g: Tensor, v: Tensor, dtype: torch.dtype) -> Tensor:
    """Effective weight g * v / ||v|| (the norm over all dims but 0) computed in `dtype`.

    Through torch's own weight-norm kernel, which the reference's weight-norm layers call: its float32 result is
    bit-exact with theirs (recomputing the norm by hand differs in the last bit, which the F0 predictor amplifies).
    """
    return torch._weight_norm(v.to(dtype), g.to(dtype).view(-1, *([1] * (v.dim() - 1))), 0)
