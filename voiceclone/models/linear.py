"""nn.Linear through oneDNN-packed weights for CPU inference, and whether this CPU has native bfloat16 kernels."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bfloat16 kernels on this CPU (AVX-512 BW/VL/DQ or AVX-NE-CONVERT); else ATen emulates."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Linear(nn.Linear):
    """nn.Linear that, in CPU inference (float32/bfloat16), multiplies through a oneDNN-packed copy of its weight.

    On the 2-core benchmark machine MKL's matrix-vector path reads the weights at ~19 GB/s; the packed oneDNN kernel
    halves the 0.5B decode step at batch 1 and cuts it ~2.5x at batch 16 (see benchmarks/README.md). The packed copy
    is made on first use and rebuilt whenever the weight tensor changes (device, dtype, load). oneDNN has bfloat16
    kernels only on CPUs with native bfloat16 support; elsewhere bfloat16 takes the plain path.
    """

    _packed: tuple[tuple, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self._use_onednn(x):
            return super().forward(x)
        key = (self.weight.data_ptr(), self.weight.dtype, self.weight._version)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach()))
        rows = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(rows, self._packed[1], self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)

    def _use_onednn(self, x: Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dtype == self.weight.dtype in (torch.float32, torch.bfloat16)
            and (x.dtype == torch.float32 or cpu_has_native_bf16())
            and not (torch.is_grad_enabled() and self.weight.requires_grad)
            and not torch.compiler.is_compiling()
            and torch.backends.mkldnn.is_available()
        )
