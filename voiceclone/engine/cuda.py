"""Every call into `torch.cuda`: availability, bfloat16 support, memory statistics, out-of-memory, CUDA graphs.

The one module that touches `torch.cuda`, so that a test can stand in for the GPU here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def is_available() -> bool:
    """Whether a CUDA device is usable."""
    return torch.cuda.is_available()


def device_count() -> int:
    return torch.cuda.device_count()


def current_device() -> int:
    return torch.cuda.current_device()


def has_bf16() -> bool:
    """Whether the current CUDA device computes bfloat16 natively (emulation does not count)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window on `device`."""
    torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Memory allocated at most on `device` since the last reset."""
    return int(torch.cuda.max_memory_allocated(device))


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA (or other accelerator) out-of-memory error."""
    return isinstance(exc, torch.OutOfMemoryError)


def free_cached_memory(device: torch.device) -> None:
    """Return cached allocator blocks after an out-of-memory error so a smaller retry can fit (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def capture_graph(step: Callable[[], Tensor]) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor]:
    """Run `step` once eagerly on a side stream (warm-up), then capture it as a CUDA graph.

    Returns the graph, the graph's output buffer (refilled by every `graph.replay()`) and the eager warm-up result."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        eager = step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        output = step()
    return graph, output, eager
