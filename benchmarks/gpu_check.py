"""The one-shot GPU check: everything the CPU-only machines could not run, in one command, under 8 minutes on one GPU.

    python benchmarks/gpu_check.py OUT_DIR [--full-model DIR] [--budget-s 470]

Writes OUT_DIR/gpu-check.json (and OUT_DIR/pytest-cuda.xml): the CUDA tests (`pytest -m "cuda or fake_cuda"`); the
demo model end to end at batch 1 and 16 in float32 (identical tokens required) and bfloat16; flash / efficient / math
attention agreement; CUDA-graph decode against eager; an out-of-memory split forced with
`torch.cuda.set_per_process_memory_fraction`; the full-size random model (benchmarks/make_model.py, built into OUT_DIR
unless `--full-model` names one) at batch 1, 16 and 32 in bfloat16 with RTF, speech tokens/s and peak memory.
Each check runs under a shared time budget (a check that would start past it is recorded as skipped).
Exit 0: every check passed; 1: a check failed (the JSON says which); 4: no CUDA device ("no CUDA device", one line).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from bench_e2e import PROMPT, TARGETS

from voiceclone.engine import cuda, runtime
from voiceclone.engine.engine import Engine, EngineSettings
from voiceclone.io.manifest import Row, resolve
from voiceclone.loading.demo import build_model_dir
from voiceclone.loading.load import load_model, resolve_model
from voiceclone.models.attention import BACKENDS
from voiceclone.models.network import StageDtypes

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NO_DEVICE_EXIT = 4  # as `voiceclone synth --device cuda` without CUDA


def rows(n: int, seed: int = 1000) -> list[Row]:
    """`n` single-prompt rows of different target lengths with fixed seeds, ready for the engine."""
    return resolve([Row(f"row{i:02d}", *PROMPT, TARGETS[i % len(TARGETS)], seed=seed + i) for i in range(n)], 0)


def synth(model, requests: list[Row], batch_size: int) -> dict:
    """One engine run: per-row tokens and waveforms, wall time, RTF, speech tokens/s, peak memory and counts."""
    engine = Engine(model, EngineSettings(batch_size=batch_size, text_frontend=False, window_rows=len(requests)))
    cuda.synchronize(model.device)
    start = time.perf_counter()
    results = {r.id: r for r in engine.run(requests)}
    cuda.synchronize(model.device)
    wall = time.perf_counter() - start
    audio = sum(r.duration for r in results.values())
    tokens = sum(len(r.speech_tokens) for r in results.values())
    return {
        "batch_size": batch_size,
        "rows": len(results),
        "errors": {k: r.error for k, r in results.items() if r.error},
        "wall_seconds": wall,
        "audio_seconds": audio,
        "rtf": wall / audio if audio else None,
        "speech_tokens_per_s": tokens / wall if wall else None,
        "peak_memory_MB": engine.stats["peak_memory_bytes"] / 2**20,
        "kv_cache_allocations": engine.stats["kv_cache_allocations"],
        "decode_graph_captures": engine.stats["decode_graph_captures"],
        "_results": results,
    }


def agreement(a: dict, b: dict) -> dict:
    """Identical tokens per row, and the largest waveform difference where the lengths agree."""
    same = [k for k in a["_results"] if a["_results"][k].speech_tokens == b["_results"][k].speech_tokens]
    diffs = [
        float(abs(a["_results"][k].wav - b["_results"][k].wav).max())
        for k in same
        if a["_results"][k].wav is not None and a["_results"][k].wav.shape == b["_results"][k].wav.shape
    ]
    return {"rows_identical_tokens": len(same), "rows": len(a["_results"]), "max_wav_diff": max(diffs, default=None)}


def public(run: dict) -> dict:
    return {k: v for k, v in run.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------------------------------
# The checks: each returns its JSON entry and sets "ok".


def check_pytest(out: Path) -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda or fake_cuda"]
    command += [f"--junitxml={out / 'pytest-cuda.xml'}", "tests"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    tail = done.stdout.strip().splitlines()[-1:] or [""]
    return {"ok": done.returncode == 0, "returncode": done.returncode, "summary": tail[0]}


def check_demo(device: torch.device) -> dict:
    demo = resolve_model("demo")
    entry: dict = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(demo, device, StageDtypes.of(dtype))
        requests = rows(16)
        model.prompts.get(PROMPT[0], requests[0].prompt_sha256)
        one, sixteen = synth(model, requests, 1), synth(model, requests, 16)
        name = str(dtype).removeprefix("torch.")
        entry[name] = {"batch1": public(one), "batch16": public(sixteen), **agreement(one, sixteen)}
    fp32 = entry["float32"]
    entry["ok"] = fp32["rows_identical_tokens"] == fp32["rows"] and not fp32["batch1"]["errors"]
    entry["ok"] = entry["ok"] and not fp32["batch16"]["errors"] and not entry["bfloat16"]["batch16"]["errors"]
    return entry


def check_attention(device: torch.device) -> dict:
    generator = torch.Generator(device=device).manual_seed(0)
    entry: dict = {"ok": True}
    for dtype in (torch.bfloat16, torch.float16):
        q, k, v = (torch.randn(4, 8, 300, 64, device=device, dtype=dtype, generator=generator) for _ in range(3))
        mask = (
            torch.arange(300, device=device)[None, None, None, :]
            < torch.tensor([300, 250, 123, 7], device=device)[:, None, None, None]
        )
        reference = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
        masked_ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), mask)
        name = str(dtype).removeprefix("torch.")
        for backend, kernels in BACKENDS.items():
            with torch.nn.attention.sdpa_kernel(kernels):
                plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                masked = None
                if backend != "flash":  # flash takes no mask (models.attention falls back to efficient)
                    masked = torch.nn.functional.scaled_dot_product_attention(q, k, v, mask)
            diff = float((plain.double() - reference).abs().max())
            masked_diff = None if masked is None else float((masked.double() - masked_ref).abs().max())
            entry[f"{name}/{backend}"] = {"max_diff_vs_float64": diff, "masked_max_diff_vs_float64": masked_diff}
            entry["ok"] = entry["ok"] and diff < 2e-2 and (masked_diff is None or masked_diff < 2e-2)
    return entry


def check_graphs(device: torch.device) -> dict:
    model = load_model(resolve_model("demo"), device, torch.float32)
    requests = rows(16, seed=7)
    model.prompts.get(PROMPT[0], requests[0].prompt_sha256)
    graphed = synth(model, requests, 16)
    enabled = cuda.graphs_enabled
    cuda.graphs_enabled = lambda device: False
    try:
        eager = synth(model, requests, 16)
    finally:
        cuda.graphs_enabled = enabled
    same = agreement(graphed, eager)
    entry = {"graphs": public(graphed), "eager": public(eager), **same}
    entry["ok"] = same["rows_identical_tokens"] == same["rows"] and graphed["decode_graph_captures"] > 0
    return entry


def check_oom_split(device: torch.device) -> dict:
    """Cap the allocator at the model plus 3x the largest batch-1 peak: batch 16 must split (flow or vocoder), and
    every row must equal its batch-1 result."""
    model = load_model(resolve_model("demo"), device, torch.float32)
    requests = [Row(f"long{i}", *PROMPT, " ".join([TARGETS[i % len(TARGETS)]] * 6), seed=50 + i) for i in range(16)]
    requests = resolve(requests, 0)
    model.prompts.get(PROMPT[0], requests[0].prompt_sha256)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    alone = synth(model, requests, 1)
    one_row = torch.cuda.max_memory_allocated(device) - base
    fraction = min(1.0, (base + 3 * one_row) / torch.cuda.get_device_properties(device).total_memory)
    calls: dict[str, list[int]] = {"flow": [], "hift": []}
    real = {"flow": model.flow.inference, "hift": model.hift.inference}

    def counted(stage: str):
        def call(batch, *args, **kwargs):
            calls[stage].append(len(batch))
            return real[stage](batch, *args, **kwargs)

        return call

    model.flow.inference, model.hift.inference = counted("flow"), counted("hift")
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    try:
        capped = synth(model, requests, 16)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        model.flow.inference, model.hift.inference = real["flow"], real["hift"]
    same = agreement(alone, capped)
    split = any(sizes and min(sizes) < max(sizes) for sizes in calls.values())
    entry = {"memory_fraction": fraction, "batch_sizes": calls, "split": split, **same, "errors": capped["errors"]}
    entry["ok"] = split and same["rows_identical_tokens"] == same["rows"] and not capped["errors"]
    return entry


def check_full(device: torch.device, out: Path, model_dir: Path | None) -> dict:
    entry: dict = {}
    if model_dir is None:
        model_dir = out / "cv3-full"
        if not (model_dir / "cosyvoice3.yaml").is_file():
            start = time.perf_counter()
            build_model_dir(model_dir, size="full", seed=0)
            entry["build_seconds"] = time.perf_counter() - start
    model = load_model(model_dir, device, StageDtypes.of(torch.bfloat16))
    requests = rows(32)
    model.prompts.get(PROMPT[0], requests[0].prompt_sha256)
    synth(model, requests[:2], 2)  # warm-up: kernels, allocator
    for batch in (1, 16, 32):
        entry[f"batch{batch}"] = public(synth(model, requests[:16] if batch == 1 else requests, batch))
    entry["ok"] = not any(entry[f"batch{b}"]["errors"] for b in (1, 16, 32))
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for gpu-check.json (created)")
    parser.add_argument("--full-model", type=Path, default=None, help="full-size model folder (default: build one)")
    parser.add_argument("--budget-s", type=float, default=470.0, help="no check starts after this many seconds")
    args = parser.parse_args()
    if not cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        sys.exit(NO_DEVICE_EXIT)
    args.out.mkdir(parents=True, exist_ok=True)
    device = runtime.resolve_device("cuda")
    start = time.perf_counter()
    report: dict = {
        "device": cuda.device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checks": {},
    }
    checks: list[tuple[str, Callable[[], dict]]] = [
        ("pytest", lambda: check_pytest(args.out)),
        ("demo_e2e", lambda: check_demo(device)),
        ("attention", lambda: check_attention(device)),
        ("graph_decode", lambda: check_graphs(device)),
        ("oom_split", lambda: check_oom_split(device)),
        ("full_model_bf16", lambda: check_full(device, args.out, args.full_model)),
    ]
    for name, check in checks:
        began = time.perf_counter()
        if began - start > args.budget_s:
            entry = {"ok": False, "skipped": f"time budget of {args.budget_s:.0f} s spent"}
        else:
            try:
                entry = check()
            except Exception as exc:
                entry = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        entry["seconds"] = time.perf_counter() - began
        report["checks"][name] = entry
        print(f"[{name}] {'ok' if entry['ok'] else 'FAILED'} in {entry['seconds']:.1f} s", flush=True)
        (args.out / "gpu-check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    report["total_seconds"] = time.perf_counter() - start
    report["ok"] = all(entry["ok"] for entry in report["checks"].values())
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {args.out / 'gpu-check.json'}: {'all checks passed' if report['ok'] else 'some checks FAILED'}")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
