"""Every call into `torch.cuda`: availability, bfloat16 support, memory statistics, synchronisation, out-of-memory,
CUDA graphs.

The one module that touches `torch.cuda`, so that a test can stand in for the GPU here: the fake-CUDA tests replace
these functions (`monkeypatch.setattr(cuda, ...)`) to count graph captures on the CPU or to raise out-of-memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

GRAPH_CHECK_TOLERANCE = 1e-3  # a replayed decode step must match the eager step this closely (rtol and atol)


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


def synchronize(device: torch.device) -> None:
    """Wait for `device`'s queued work (CUDA only), so an asynchronous error surfaces in the batch that caused it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA (or other accelerator) out-of-memory error."""
    return isinstance(exc, torch.OutOfMemoryError)


def free_cached_memory(device: torch.device) -> None:
    """Return cached allocator blocks after an out-of-memory error so a smaller retry can fit (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def graphs_enabled(device: torch.device) -> bool:
    """Whether decode steps on `device` are replayed from CUDA graphs (CUDA devices only)."""
    return device.type == "cuda"


def capture_graph(step: Callable[[], Tensor]) -> tuple[Any, Tensor]:
    """Run the idempotent `step` once eagerly on a side stream (warm-up), capture it as a CUDA graph, replay it once
    and check the replay against the eager result (RuntimeError when they differ).

    Returns the graph and its output buffer, refilled by every `graph.replay()`."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        eager = step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        output = step()
    graph.replay()
    if not torch.allclose(output, eager, rtol=GRAPH_CHECK_TOLERANCE, atol=GRAPH_CHECK_TOLERANCE):
        raise RuntimeError("a replayed decode step differs from the eager step")
    return graph, output
