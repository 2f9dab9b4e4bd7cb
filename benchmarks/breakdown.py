"""Where a call's CPU time goes, by kind of op (torch.profiler, self time of each ATen/oneDNN op).

Kinds: `gemm` (linears and matmuls), `attention` (SDPA), `conv`, `norm`, `elementwise` (activations, residuals,
rotary), `copy` (layout copies, casts, padding, concatenation) and `other`. Run alone on a small DiT (full width, a
few blocks) to see the shares in a dtype without a full-size model:

    python benchmarks/breakdown.py --dtype bfloat16 --depth 2 --frames 230
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

KINDS = {
    "gemm": ("addmm", "aten::mm", "bmm", "matmul", "_linear_pointwise", "mkldnn_linear", "baddbmm"),
    "attention": ("scaled_dot_product", "flash_attention", "_efficient_attention"),
    "conv": ("convolution", "conv2d", "conv1d", "_slow_conv", "thnn_conv"),
    "norm": ("layer_norm", "group_norm", "batch_norm"),
    "elementwise": ("gelu", "mish", "silu", "add", "mul", "addcmul", "sub", "div", "tanh", "sin", "cos", "exp", "flip"),
    "copy": ("copy_", "clone", "contiguous", "cat", "fill_", "pad", "to_dense", "_to_copy", "repeat", "index"),
}


def kind_of(op: str) -> str:
    """The kind an op name belongs to (the first whose patterns match), else "other"."""
    for kind, patterns in KINDS.items():
        if any(pattern in op for pattern in patterns):
            return kind
    return "other"


def breakdown(fn: Callable[[], object], repeats: int = 1) -> dict:
    """Seconds of self CPU time per kind over `repeats` calls of `fn` (after one untimed call), with each kind's
    share and its five costliest ops."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            fn()
    per_op = {e.key: e.self_cpu_time_total / 1e6 / repeats for e in prof.key_averages()}
    total = sum(per_op.values())
    kinds: dict[str, dict] = {}
    for op, seconds in sorted(per_op.items(), key=lambda item: -item[1]):
        entry = kinds.setdefault(kind_of(op), {"seconds": 0.0, "top_ops": {}})
        entry["seconds"] += seconds
        if len(entry["top_ops"]) < 5:
            entry["top_ops"][op] = seconds
    for entry in kinds.values():
        entry["share"] = entry["seconds"] / total if total else 0.0
    return {"total_seconds": total, "kinds": kinds}


def print_breakdown(result: dict, title: str) -> None:
    print(f"  {title}: {result['total_seconds'] * 1e3:.1f} ms of CPU time")
    for kind, entry in sorted(result["kinds"].items(), key=lambda item: -item[1]["seconds"]):
        top = ", ".join(f"{op} {s * 1e3:.1f}" for op, s in list(entry["top_ops"].items())[:3])
        print(f"    {kind:12s} {entry['share'] * 100:5.1f}%  {entry['seconds'] * 1e3:8.1f} ms  ({top})")


def main() -> None:
    from voiceclone.models.dit import DiT, DiTConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--depth", type=int, default=2, help="DiT blocks (full width: dim 1024, 16 heads)")
    parser.add_argument("--frames", type=int, default=230, help="frames per row (CFG doubles the rows to 2)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    dit = DiT(DiTConfig(depth=args.depth)).eval().requires_grad_(False).to(dtype)
    frames = args.frames
    x, mu, cond = (torch.randn(2, frames, 80, generator=gen).to(dtype) for _ in range(3))
    spks = torch.randn(2, 80, generator=gen).to(dtype)
    modulation = [m[0] for m in dit.modulations(torch.tensor([0.5]))]
    with torch.inference_mode():
        result = breakdown(lambda: dit(x, None, mu, modulation, spks, cond), repeats=3)
    print_breakdown(result, f"DiT depth {args.depth}, 2 x {frames} frames, {args.dtype}")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
