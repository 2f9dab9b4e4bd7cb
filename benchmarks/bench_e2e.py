"""End-to-end throughput of the batch engine on a 16-row manifest, batched against batch 1, written as JSON.

Each (dtype, batch size) configuration runs in a fresh process, so the peak memory (CUDA max allocated, or the
process peak RSS on the CPU) belongs to that configuration alone. The batched and batch-1 runs must give identical
tokens; the JSON records that and the largest waveform difference.

    python benchmarks/bench_e2e.py --model /tmp/cv3-full --dtype float32 bfloat16 --batch-sizes 1 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from floors import machine, results_tag

from voiceclone.engine import runtime
from voiceclone.engine.engine import Engine, EngineSettings
from voiceclone.io.manifest import Row, resolve
from voiceclone.loading.load import load_model

HERE = Path(__file__).resolve().parent
PROMPTS = HERE.parent / "examples" / "prompts"
PROMPT = (PROMPTS / "canoe_44k.wav", "The birch canoe slid on the smooth planks.")
# Short targets (3 to 7 tokens: at most 60 to 140 speech tokens each), so the full-size fp32 runs fit a few minutes.
TARGETS = [
    "Yes.",
    "No.",
    "Fine.",
    "Good day.",
    "天气很好。",
    "Good night.",
    "Not today.",
    "Sit down.",
    "All right.",
    "Me too.",
    "Go home.",
    "I agree.",
    "Thank you.",
    "Come in.",
    "Right away.",
    "See you soon.",
]


def manifest(rows: int) -> list[Row]:
    """`rows` rows of different target lengths sharing one prompt, with fixed seeds, ready for the engine."""
    return resolve([Row(f"row{i:02d}", *PROMPT, TARGETS[i % len(TARGETS)], seed=1000 + i) for i in range(rows)], 0)


def run_one(args: argparse.Namespace) -> dict:
    """One configuration in this process: load, warm the prompt cache, synthesise every row, report."""
    runtime.set_cpu_threads(args.threads)
    rt = runtime.resolve_runtime(args.device, args.dtype[0], args.attention, compile=args.compile)
    model = load_model(args.model, rt.device, rt.dtypes)
    requests = manifest(args.rows)
    model.prompts.get(PROMPT[0], requests[0].prompt_sha256)
    settings = EngineSettings(batch_size=args.batch_sizes[0], text_frontend=False, window_rows=args.rows)
    engine = Engine(model, settings)
    start = time.perf_counter()
    results = {r.id: r for r in engine.run(requests)}
    wall = time.perf_counter() - start
    errors = {k: r.error for k, r in results.items() if r.error}
    audio = sum(r.duration for r in results.values())
    stages = {s: sum(r.timings.get(s, 0.0) for r in results.values()) for s in ("frontend", "llm", "flow", "hift")}
    np.savez(args.wav_out, **{k: r.wav for k, r in results.items() if r.wav is not None})
    return {
        "dtype": args.dtype[0],
        "batch_size": args.batch_sizes[0],
        "rows": len(results),
        "errors": errors,
        "wall_seconds": wall,
        "audio_seconds": audio,
        "rtf": wall / audio if audio else None,
        "stage_seconds": stages,
        "speech_tokens": {k: r.speech_tokens for k, r in results.items()},
        "peak_memory_MB": engine.stats["peak_memory_bytes"] / 2**20,
    }


def compare(a: dict, b: dict, wav_a: Path, wav_b: Path) -> dict:
    """Whether two runs of the same rows gave the same tokens, and their largest waveform difference."""
    with np.load(wav_a) as x, np.load(wav_b) as y:
        diffs = [float(np.max(np.abs(x[k] - y[k]))) if x[k].shape == y[k].shape else float("inf") for k in x.files]
    return {"identical_tokens": a["speech_tokens"] == b["speech_tokens"], "max_wav_diff": max(diffs, default=0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory (make one with benchmarks/make_model.py)")
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/)")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--wav-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(run_one(args)))
        return
    device = runtime.resolve_device(args.device)
    out = Path(args.out or HERE / "results" / f"e2e-{Path(args.model).name}-{results_tag(device)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    runs = []
    scratch = tempfile.TemporaryDirectory()
    for dtype in args.dtype:
        for batch in args.batch_sizes:
            wav_out = Path(scratch.name) / f"{dtype}-b{batch}.npz"
            command = [sys.executable, __file__, "--single", "--model", args.model, "--dtype", dtype]
            command += ["--batch-sizes", str(batch), "--rows", str(args.rows), "--device", args.device]
            command += ["--attention", args.attention, "--wav-out", str(wav_out)]
            command += ["--threads", str(args.threads)] if args.threads else []
            command += ["--compile"] if args.compile else []
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            run = json.loads(done.stdout.strip().splitlines()[-1])
            run["wav_file"] = str(wav_out)
            runs.append(run)
            print(
                f"[{dtype} batch {batch}] {run['wall_seconds']:.2f} s for {run['audio_seconds']:.2f} s of audio "
                f"(RTF {run['rtf']:.3f}), peak {run['peak_memory_MB']:.0f} MB, errors {len(run['errors'])}"
            )
    summary = {}
    for dtype in args.dtype:
        mine = {r["batch_size"]: r for r in runs if r["dtype"] == dtype}
        base, best = mine[min(mine)], mine[max(mine)]
        summary[dtype] = {
            f"speedup_batch{best['batch_size']}_vs_batch{base['batch_size']}": base["wall_seconds"]
            / best["wall_seconds"],
            **compare(base, best, Path(base["wav_file"]), Path(best["wav_file"])),
        }
        print(f"[{dtype}] {summary[dtype]}")
    if {"float32", "bfloat16"} <= {r["dtype"] for r in runs}:
        fp32 = min((r for r in runs if r["dtype"] == "float32"), key=lambda r: r["batch_size"])
        bf16 = max((r for r in runs if r["dtype"] == "bfloat16"), key=lambda r: r["batch_size"])
        summary["bfloat16_batched_vs_float32_batch1"] = fp32["wall_seconds"] / bf16["wall_seconds"]
    scratch.cleanup()
    for r in runs:
        r.pop("wav_file")
        r.pop("speech_tokens")
    meta = {"model": args.model, "device": str(device), **machine(device)}
    meta["utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta["loadavg_1min_before_after"] = [load_before, os.getloadavg()[0]]
    out.write_text(json.dumps({**meta, "runs": runs, "summary": summary}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
