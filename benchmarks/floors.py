"""Hardware floors the stage benchmarks are compared against: memory bandwidth and matmul throughput.

Run alone to print both: `python benchmarks/floors.py --dtype float32 --device cpu`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from voiceclone.models.linear import Linear, cpu_has_native_bf16


def sync(device: torch.device) -> None:
    """Wait for queued device work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """The fastest of `repeats` timed calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def memory_bandwidth(device: torch.device, megabytes: int = 1024, repeats: int = 5) -> float:
    """Bytes per second moved by a large tensor copy (read + write counted), far bigger than any cache."""
    n = megabytes * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = best_seconds(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() * src.element_size() / seconds


def matmul_flops(device: torch.device, dtype: torch.dtype, m: int = 2048, k: int = 1024, n: int = 4096) -> float:
    """FLOP/s of one (m, k) x (k, n) matmul in `dtype`, the shape class of the flow estimator's projections."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    seconds = best_seconds(lambda: a @ b, device)
    return 2 * m * k * n / seconds


def packed_linear_flops(dtype: torch.dtype, m: int, k: int, n: int) -> float:
    """FLOP/s of the CPU's packed oneDNN linear (models.linear.Linear, as the LLM and the bfloat16 DiT run) on an
    (m, k) input and a (k -> n) weight; 0.0 where it does not run (bfloat16 without oneDNN bfloat16 kernels)."""
    layer = Linear(k, n, bias=False).to(dtype).eval().requires_grad_(False)
    x = torch.randn(m, k).to(dtype)
    if not layer._use_onednn(x):
        return 0.0
    with torch.inference_mode():
        seconds = best_seconds(lambda: layer(x), torch.device("cpu"))
    return 2 * m * k * n / seconds


def machine(device: torch.device) -> dict:
    """What the numbers depend on: the GPU's name, or the CPU's vector ISA and whether it has native bfloat16."""
    if device.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(device)}
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16()}


def results_tag(device: torch.device) -> str:
    """The device part of a results file name: `cuda`, or `cpu-avx2` / `cpu-avx512` (the numbers differ by ISA)."""
    return device.type if device.type != "cpu" else f"cpu-{torch.backends.cpu.get_cpu_capability().lower()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    result = {
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        **machine(device),
        "memory_bandwidth_GBps": memory_bandwidth(device) / 1e9,
        "matmul_GFLOPps": matmul_flops(device, dtype) / 1e9,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
