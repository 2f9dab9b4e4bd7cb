"""The one attention function every module calls: fused SDPA with a selectable backend."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from voiceclone.errors import UsageError

BACKENDS = {
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "math": [SDPBackend.MATH],
}
MASKED_FLASH_FALLBACK = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
_selected: str = "auto"


def set_attention_backend(name: str, device: torch.device, dtype: torch.dtype) -> None:
    """Choose the SDPA backend for the whole process; fail with one line if it cannot run here."""
    global _selected
    if name != "auto" and name not in BACKENDS:
        raise UsageError(f"--attention: unknown backend {name!r} (choose auto, flash, efficient or math)")
    if name == "flash" and (device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16)):
        raise UsageError("--attention flash needs a CUDA device and --dtype float16 or bfloat16")
    if name == "efficient" and device.type != "cuda":
        raise UsageError("--attention efficient needs a CUDA device")
    _selected = name


def attention_backend() -> str:
    """The backend chosen by `set_attention_backend` ("auto" lets torch pick)."""
    return _selected


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """`scaled_dot_product_attention` on (B, H, T, D) tensors; `enable_gqa` lets K/V keep fewer heads."""
    backends = BACKENDS[_selected] if _selected != "auto" else None
    if _selected == "flash" and mask is not None:
        backends = MASKED_FLASH_FALLBACK  # flash kernels take no mask; padded batches use the efficient kernel
    ctx = sdpa_kernel(backends) if backends else contextlib.nullcontext()
    with ctx:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=enable_gqa)
