"""nn.Linear through oneDNN-packed weights for CPU inference, and what bfloat16 support this CPU has."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PACKED_DTYPES = (torch.float32, torch.bfloat16)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bfloat16 kernels on this CPU (AVX-512 BW/VL/DQ or AVX-NE-CONVERT); else ATen emulates."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def cpu_has_bf16_dot() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512_BF16 or AMX), where bfloat16 GEMMs outrun float32's.

    oneDNN also runs bfloat16 on plain AVX-512 (converting to float32), at float32's rate at best."""
    return cpu_has_native_bf16() and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


class Linear(nn.Linear):
    """nn.Linear that, in CPU inference in one of `pack_dtypes`, multiplies through a oneDNN-packed copy of its weight;
    with `tanh_gelu` the output goes through tanh-GELU (fused into the packed kernel).

    On the 2-core benchmark machine MKL's matrix-vector path reads the weights at ~19 GB/s; the packed oneDNN kernel
    halves the 0.5B decode step at batch 1 and cuts it ~2.5x at batch 16 (see benchmarks/README.md). In bfloat16 the
    unpacked path re-lays the weight out on every call. The packed copy is made on first use and rebuilt whenever the
    weight tensor changes (device, dtype, load). oneDNN has bfloat16 kernels only on CPUs with native bfloat16
    support; elsewhere bfloat16 takes the plain path.
    """

    _packed: tuple[tuple, Tensor] | None = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        pack_dtypes: tuple[torch.dtype, ...] = PACKED_DTYPES,
        tanh_gelu: bool = False,
    ):
        super().__init__(in_features, out_features, bias=bias)
        self.pack_dtypes, self.tanh_gelu = pack_dtypes, tanh_gelu

    def forward(self, x: Tensor) -> Tensor:
        if not self._use_onednn(x):
            out = super().forward(x)
            return F.gelu(out, approximate="tanh") if self.tanh_gelu else out
        key = (self.weight.data_ptr(), self.weight.dtype, self.weight._version)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach()))
        rows = x.reshape(-1, x.shape[-1])
        attr, algorithm = ("gelu", "tanh") if self.tanh_gelu else ("none", "")
        out = torch.ops.mkldnn._linear_pointwise(rows, self._packed[1], self.bias, attr, [], algorithm)
        return out.view(*x.shape[:-1], self.out_features)

    def _use_onednn(self, x: Tensor) -> bool:
        return (
            not torch.compiler.is_compiling()  # first: a compiled graph never traces the checks below
            and x.device.type == "cpu"
            and x.dtype == self.weight.dtype in self.pack_dtypes
            and (x.dtype == torch.float32 or cpu_has_native_bf16())
            and not (torch.is_grad_enabled() and self.weight.requires_grad)
            and torch.backends.mkldnn.is_available()
        )
