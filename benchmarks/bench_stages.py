"""Per-stage speed of a CosyVoice3 or CosyVoice2 model against the hardware floors, written as JSON into
benchmarks/results/.

LLM decode tokens/s at several batch sizes (every row forced to the same length: min_len = max_len), the batch-1
decode step against the memory-bandwidth floor (weight bytes read per step / measured bandwidth), flow mel frames/s
and its time against the GEMM floor (its FLOPs / the best measured GEMM FLOP/s at the estimator's shape, ATen's or the
packed oneDNN linear's), where the flow's CPU time goes by kind of op, vocoder samples/s. Each network runs in the
dtype measured. The JSON records the host's facts (benchmarks/host.py) beside the numbers.

    python benchmarks/make_model.py --family cosyvoice3 --size full --seed 0 /tmp/cv3-full
    python benchmarks/bench_stages.py --model /tmp/cv3-full --dtype float32 bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from breakdown import breakdown, print_breakdown
from floors import best_seconds, machine, matmul_flops, memory_bandwidth, packed_linear_flops, results_tag
from host import bf16_targets_note, host_facts, warnings_for
from torch.utils.flop_counter import FlopCounterMode

from voiceclone.engine import runtime
from voiceclone.engine.decoding import LMRequest, TokenGenerator
from voiceclone.frontend import text
from voiceclone.loading.load import load_model
from voiceclone.models.linear import cpu_has_bf16_dot
from voiceclone.models.network import StageDtypes

HERE = Path(__file__).resolve().parent
DEFAULT_PROMPT = HERE.parent / "examples" / "prompts" / "stella_16k.wav"
PROMPT_TEXT = "Please call Stella and ask her to bring these things with her from the store."


def weight_bytes_per_step(lm: torch.nn.Module) -> int:
    """Bytes of LM weights one decode step reads: everything but embedding tables (one row each is read)."""
    embedding_params = {id(p) for m in lm.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() * p.element_size() for p in lm.parameters() if id(p) not in embedding_params)


def bench_lm(model, prompt, batch_sizes: list[int], steps: int, repeats: int, prompt_tokens: int) -> dict:
    """Decode throughput per batch size: (time of 4 + steps tokens - time of 4 tokens) / steps, so the prefill and
    the first steps cancel; every row is forced to the same length (min_len = max_len)."""
    tokenizer = model.tokenizer
    text_ids = tokenizer.encode("Benchmarking the decoder.")
    prompt_text_ids = tokenizer.encode(text.assemble_prompt_text(PROMPT_TEXT))
    speech = [int(t) for t in prompt.speech_tokens.tolist()][:prompt_tokens]
    generator = TokenGenerator(model.lm)

    def generate(batch: int, length: int) -> None:
        requests = [LMRequest(text_ids, prompt_text_ids, speech, seed, length, length) for seed in range(batch)]
        results = generator.generate(requests, batch)
        assert all(len(r.tokens) == length for r in results), "forced-length decode returned other lengths"

    prefix_tokens = model.lm.prefix_length(len(text_ids), len(prompt_text_ids), len(speech))
    out = {"prefix_tokens": prefix_tokens, "decode_steps": steps}
    for batch in batch_sizes:
        short = best_seconds(lambda batch=batch: generate(batch, 4), model.device, repeats)
        full = best_seconds(lambda batch=batch: generate(batch, 4 + steps), model.device, repeats)
        step = max(full - short, 1e-9) / steps
        out[f"batch{batch}"] = {"step_ms": step * 1e3, "tokens_per_s": batch / step, "first4_ms": short * 1e3}
    return out


def estimator_gemm(flow) -> dict[str, int]:
    """(k, n) of the flow estimator's feed-forward projection, its typical GEMM: the DiT's (CosyVoice3) or the
    U-Net transformer blocks' (CosyVoice2, 4 x channels)."""
    if hasattr(flow, "dit"):
        return {"k": flow.dit.dim, "n": flow.dit.dim * flow.dit.ff_mult}
    return {"k": flow.estimator.channels, "n": 4 * flow.estimator.channels}


def bench_flow(model, prompt, tokens: int, prompt_tokens: int, repeats: int) -> dict:
    """Flow mel frames/s for one row of `tokens` speech tokens after `prompt_tokens` prompt tokens, and its FLOPs
    (counted on the first, warm-up call) against the best measured GEMM rate at the estimator's shape; where its CPU
    time goes by kind of op (one profiled call)."""
    device, dtype = model.device, model.dtypes.flow
    gen = torch.Generator().manual_seed(0)
    speech = torch.randint(0, model.config.lm.speech_token_size, (tokens,), generator=gen).to(device)
    ratio = model.config.flow.token_mel_ratio
    args = (
        [speech],
        [prompt.speech_tokens[:prompt_tokens].to(device=device, dtype=torch.long)],
        [prompt.mel[: ratio * prompt_tokens].to(device=device, dtype=dtype)],
        prompt.embedding[None].to(device=device, dtype=dtype),
    )
    with FlopCounterMode(display=False) as counter:
        model.flow.inference(*args)
    flops = counter.get_total_flops()
    seconds = best_seconds(lambda: model.flow.inference(*args), device, repeats, warmup=0)
    frames_total = ratio * (tokens + min(prompt_tokens, len(prompt.speech_tokens)))
    shape = {"m": 2 * frames_total, **estimator_gemm(model.config.flow)}
    aten = matmul_flops(device, dtype, **shape)
    packed = packed_linear_flops(dtype, **shape) if device.type == "cpu" else 0.0
    gemm = max(aten, packed)
    floor = flops / gemm
    profile = breakdown(lambda: model.flow.inference(*args)) if device.type == "cpu" else None
    return {
        "tokens": tokens,
        "mel_frames": ratio * tokens,
        "frames_in_estimator": frames_total,
        "seconds": seconds,
        "mel_frames_per_s": ratio * tokens / seconds,
        "gflop": flops / 1e9,
        "gemm_gflop_per_s": gemm / 1e9,
        "gemm_aten_gflop_per_s": aten / 1e9,
        "gemm_packed_gflop_per_s": packed / 1e9,
        "gemm_floor_s": floor,
        "ratio_to_floor": seconds / floor,
        "cpu_time_by_kind": profile,
    }


def bench_hift(model, frames: int, repeats: int) -> dict:
    """Vocoder samples/s on one mel of `frames` frames."""
    gen = torch.Generator().manual_seed(0)
    mel = (torch.randn(model.config.hift.in_channels, frames, generator=gen) - 5.0).to(model.device)
    seconds = best_seconds(lambda: model.hift.inference([mel]), model.device, repeats)
    samples = len(model.hift.inference([mel])[0])
    return {"mel_frames": frames, "samples": samples, "seconds": seconds, "samples_per_s": samples / seconds}


def run(args: argparse.Namespace, dtype_name: str) -> dict:
    rt = runtime.resolve_runtime(args.device, dtype_name, args.attention, compile=False)
    start = time.perf_counter()
    model = load_model(args.model, rt.device, StageDtypes(rt.dtype, rt.dtype, rt.dtype))  # every stage in the dtype
    load_s = time.perf_counter() - start
    prompt = model.prompts.frontend.extract(Path(args.prompt))
    bandwidth = memory_bandwidth(rt.device)
    lm = bench_lm(model, prompt, args.batch_sizes, args.decode_steps, args.repeats, args.prompt_tokens)
    step_bytes = weight_bytes_per_step(model.lm)
    floor_ms = step_bytes / bandwidth * 1e3
    lm["weight_bytes_per_step"] = step_bytes
    lm["bandwidth_floor_ms"] = floor_ms
    lm["batch1_ratio_to_floor"] = lm["batch1"]["step_ms"] / floor_ms if "batch1" in lm else None
    largest = max(args.batch_sizes)
    if "batch1" in lm:
        lm[f"batch{largest}_speedup_vs_batch1"] = lm[f"batch{largest}"]["tokens_per_s"] / lm["batch1"]["tokens_per_s"]
    return {
        "dtype": dtype_name,
        "load_seconds": load_s,
        "memory_bandwidth_GBps": bandwidth / 1e9,
        "lm": lm,
        "flow": bench_flow(model, prompt, args.flow_tokens, args.prompt_tokens, args.flow_repeats),
        "hift": bench_hift(model, args.hift_frames, args.repeats),
    }


def print_summary(result: dict) -> None:
    lm, flow, hift = result["lm"], result["flow"], result["hift"]
    print(f"[{result['dtype']}] bandwidth {result['memory_bandwidth_GBps']:.1f} GB/s")
    for key, value in lm.items():
        if key.startswith("batch") and isinstance(value, dict):
            print(f"  LLM decode {key}: {value['tokens_per_s']:.1f} tok/s ({value['step_ms']:.2f} ms/step)")
    print(f"  decode step b1 {lm['batch1']['step_ms']:.2f} ms vs bandwidth floor {lm['bandwidth_floor_ms']:.2f} ms")
    for key, value in lm.items():
        if key.endswith("_speedup_vs_batch1"):
            print(f"  decode throughput {key.removesuffix('_speedup_vs_batch1')} / batch1: {value:.2f}x")
    print(f"  flow {flow['mel_frames_per_s']:.1f} mel frames/s; {flow['seconds']:.3f} s vs GEMM floor")
    print(f"       {flow['gemm_floor_s']:.3f} s ({flow['gflop']:.1f} GFLOP at {flow['gemm_gflop_per_s']:.0f} GFLOP/s)")
    if flow["cpu_time_by_kind"]:
        print_breakdown(flow["cpu_time_by_kind"], "flow CPU time by kind of op")
    print(f"  vocoder {hift['samples_per_s']:.0f} samples/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory (make one with benchmarks/make_model.py)")
    parser.add_argument("--dtype", nargs="+", default=None, help="default: float32, and bfloat16 where it is fast")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--prompt", default=str(DEFAULT_PROMPT))
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    parser.add_argument("--decode-steps", type=int, default=24)
    parser.add_argument("--prompt-tokens", type=int, default=50, help="prompt speech tokens used (LLM and flow)")
    parser.add_argument("--flow-tokens", type=int, default=50)
    parser.add_argument("--flow-repeats", type=int, default=2)
    parser.add_argument("--hift-frames", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()
    threads = runtime.set_cpu_threads(args.threads)
    device = runtime.resolve_device(args.device)
    load_before = os.getloadavg()[0]
    host = host_facts(device)
    for line in [bf16_targets_note(device), *warnings_for(host)]:
        if line:
            print(f"note: {line}")
    fast_bf16 = device.type == "cuda" or cpu_has_bf16_dot()
    results = []
    for dtype_name in args.dtype or (["float32", "bfloat16"] if fast_bf16 else ["float32"]):
        results.append(run(args, dtype_name))
        print_summary(results[-1])
    out = Path(args.out or HERE / "results" / f"stages-{Path(args.model).name}-{results_tag(device)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": str(args.model), "device": str(device), "threads": threads, **machine(device), "host": host}
    meta["loadavg_1min_before_after"] = [load_before, os.getloadavg()[0]]
    meta["utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.write_text(json.dumps({**meta, "results": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
