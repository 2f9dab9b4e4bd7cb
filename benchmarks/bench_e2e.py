"""End-to-end throughput of the batch engine on a 16-row manifest, batched against batch 1, written as JSON.

Each (dtype, batch size) configuration runs in a fresh process, so the peak memory (CUDA max allocated, or the
process peak RSS on the CPU) belongs to that configuration alone. The batched and batch-1 runs must give identical
tokens; the JSON records that and the largest waveform difference. With `float32` and `mixed` both run, `mixed` at
the largest batch is compared with `float32` at batch 1: the speedup, and the fidelity of its audio: speech tokens
identical (asserted: the run fails otherwise), durations identical, mel and waveform SNR in dB per row.
`--emulate-bf16` runs `mixed` in bfloat16 on a CPU without bfloat16 arithmetic, for its fidelity only (emulated
bfloat16 rounds as native bfloat16 does; its speed means nothing).

    python benchmarks/bench_e2e.py --model /tmp/cv3-full --dtype float32 mixed bfloat16 --batch-sizes 1 16
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
import torch
from floors import machine, results_tag
from host import bf16_targets_note, host_facts, warnings_for

from voiceclone.engine import runtime
from voiceclone.engine.engine import Engine, EngineSettings
from voiceclone.io.manifest import Row, resolve
from voiceclone.loading.load import load_model
from voiceclone.models.linear import cpu_has_bf16_dot
from voiceclone.models.network import StageDtypes

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


def record_mels(flow, mels: dict[tuple[int, ...], np.ndarray]) -> None:
    """Keep every mel the flow returns, keyed by the tokens it rendered (bench rows have one segment each)."""
    inference = flow.inference

    def recording(tokens, *args, **kwargs):
        out = inference(tokens, *args, **kwargs)
        for row_tokens, mel in zip(tokens, out, strict=True):
            mels[tuple(row_tokens.tolist())] = mel.float().cpu().numpy()
        return out

    flow.inference = recording


def run_one(args: argparse.Namespace) -> dict:
    """One configuration in this process: load, warm the prompt cache, synthesise every row, report; the wavs and
    mels go to `args.wav_out`."""
    runtime.set_cpu_threads(args.threads)
    rt = runtime.resolve_runtime(args.device, args.dtype[0], args.attention, compile=args.compile)
    dtypes = rt.dtypes
    if args.emulate_bf16 and args.dtype[0] == "mixed":
        dtypes = StageDtypes(llm=torch.float32, flow=torch.bfloat16, vocoder=torch.bfloat16)
    model = load_model(args.model, rt.device, dtypes)
    if rt.compile:
        runtime.compile_model(model)
    mels: dict[tuple[int, ...], np.ndarray] = {}
    record_mels(model.flow, mels)
    requests = manifest(args.rows)
    model.prompts.get(PROMPT[0], requests[0].prompt_sha256)
    settings = EngineSettings(batch_size=args.batch_sizes[0], text_frontend=False, window_rows=args.rows)
    engine = Engine(model, settings)
    if rt.compile:  # compile outside the timed run (dynamic shapes: one warm-up row covers the others)
        list(Engine(model, settings).run(requests[:1]))
        mels.clear()
    start = time.perf_counter()
    results = {r.id: r for r in engine.run(requests)}
    wall = time.perf_counter() - start
    errors = {k: r.error for k, r in results.items() if r.error}
    audio = sum(r.duration for r in results.values())
    stages = {s: sum(r.timings.get(s, 0.0) for r in results.values()) for s in ("frontend", "llm", "flow", "hift")}
    arrays = {f"wav/{k}": r.wav for k, r in results.items() if r.wav is not None}
    for k, r in results.items():
        mel = mels.get(tuple(model.lm.flow_tokens(r.speech_tokens))) if r.segments == 1 else None
        if mel is not None:
            arrays[f"mel/{k}"] = mel
    np.savez(args.wav_out, **arrays)
    return {
        "dtype": args.dtype[0],
        "stage_dtypes": dtypes.names(),
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
        wavs = [k for k in x.files if k.startswith("wav/")]
        diffs = [float(np.max(np.abs(x[k] - y[k]))) if x[k].shape == y[k].shape else float("inf") for k in wavs]
    return {"identical_tokens": a["speech_tokens"] == b["speech_tokens"], "max_wav_diff": max(diffs, default=0.0)}


def snr_db(reference: np.ndarray, other: np.ndarray) -> float | None:
    """10 log10(reference energy / difference energy); None when the two are identical."""
    noise = float(np.sum((other.astype(np.float64) - reference) ** 2))
    return None if noise == 0 else float(10 * np.log10(float(np.sum(reference.astype(np.float64) ** 2)) / noise))


def spread(values: list[float | None]) -> dict:
    """Min, median and max of the finite values, and how many were identical (None)."""
    finite = [v for v in values if v is not None]
    stats = {"min": min(finite), "median": float(np.median(finite)), "max": max(finite)} if finite else {}
    return {**stats, "identical_rows": len(values) - len(finite)}


def fidelity(exact: dict, fast: dict) -> dict:
    """`fast` (mixed) against `exact` (float32): speedup, identical tokens and durations, mel and waveform SNR (dB)."""
    with np.load(exact["wav_file"]) as x, np.load(fast["wav_file"]) as y:
        rows = sorted(k.removeprefix("wav/") for k in x.files if k.startswith("wav/"))
        durations = all(x[f"wav/{k}"].shape == y[f"wav/{k}"].shape for k in rows)
        wav = [snr_db(x[f"wav/{k}"], y[f"wav/{k}"]) if durations else None for k in rows]
        mels = [k for k in rows if f"mel/{k}" in x.files and f"mel/{k}" in y.files]
        mel = [snr_db(x[f"mel/{k}"], y[f"mel/{k}"]) for k in mels if x[f"mel/{k}"].shape == y[f"mel/{k}"].shape]
    return {
        "float32_batch": exact["batch_size"],
        "mixed_batch": fast["batch_size"],
        "mixed_stage_dtypes": fast["stage_dtypes"],
        "speedup": exact["wall_seconds"] / fast["wall_seconds"],
        "identical_tokens": exact["speech_tokens"] == fast["speech_tokens"],
        "identical_durations": durations,
        "wav_snr_db": spread(wav),
        "mel_snr_db": spread(mel),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory (make one with benchmarks/make_model.py)")
    parser.add_argument("--dtype", nargs="+", default=None, help="default: float32 mixed, plus bfloat16 where fast")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/)")
    parser.add_argument("--emulate-bf16", action="store_true", help="mixed in bfloat16 without bf16 arithmetic")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--wav-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(run_one(args)))
        return
    runtime.set_cpu_threads(args.threads)  # as each configuration's process will, for the host facts
    device = runtime.resolve_device(args.device)
    out = Path(args.out or HERE / "results" / f"e2e-{Path(args.model).name}-{results_tag(device)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    host = host_facts(device)
    note = bf16_targets_note(device)
    for line in [note, *warnings_for(host)]:
        if line:
            print(f"note: {line}")
    fast_bf16 = device.type == "cuda" or cpu_has_bf16_dot()
    args.dtype = args.dtype or (["float32", "mixed", "bfloat16"] if fast_bf16 else ["float32", "mixed"])
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
            command += ["--emulate-bf16"] if args.emulate_bf16 else []
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
    if {"float32", "mixed"} <= {r["dtype"] for r in runs}:
        fp32 = min((r for r in runs if r["dtype"] == "float32"), key=lambda r: r["batch_size"])
        mixed = max((r for r in runs if r["dtype"] == "mixed"), key=lambda r: r["batch_size"])
        summary["mixed_vs_float32"] = fidelity(fp32, mixed)
        summary["mixed_vs_float32"]["target_2.5x"] = note or (
            "met" if summary["mixed_vs_float32"]["speedup"] >= 2.5 else "missed"
        )
        print(f"[mixed vs float32] {summary['mixed_vs_float32']}")
    scratch.cleanup()
    for r in runs:
        r.pop("wav_file")
        r.pop("speech_tokens")
    meta = {"model": args.model, "device": str(device), **machine(device), "host": host}
    meta["utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta["loadavg_1min_before_after"] = [load_before, os.getloadavg()[0]]
    out.write_text(json.dumps({**meta, "runs": runs, "summary": summary}, indent=1) + "\n")
    print(f"wrote {out}")
    if "mixed_vs_float32" in summary and not summary["mixed_vs_float32"]["identical_tokens"]:
        sys.exit("mixed and float32 gave different speech tokens: the LLM must run float32 in mixed")


if __name__ == "__main__":
    main()
