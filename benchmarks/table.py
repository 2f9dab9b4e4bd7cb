"""Print the markdown tables of benchmarks/README.md from the JSON files in benchmarks/results/.

python benchmarks/table.py benchmarks/results/*-cosyvoice3-full-cpu-avx2.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _where(data: dict, *more: str) -> str:
    """The device with what its numbers depend on: the GPU's name, or the CPU's ISA and bfloat16 support."""
    if "gpu" in data:
        details = [data["gpu"]]
    else:
        details = [data["cpu_capability"], "native bf16" if data["native_bf16"] else "no native bf16"]
    return f"{data['device']} ({', '.join([*details, *more])})"


def _load(data: dict) -> str:
    before, after = data["loadavg_1min_before_after"]
    return f"load average before/after {before:.1f}/{after:.1f}"


def host_line(data: dict) -> list[str]:
    """One line of the host facts that explain a difference between hosts (results files without them: none)."""
    host = data.get("host")
    if not host or "cpu" not in host:
        return []
    cpu, threads, gemm = host["cpu"], host["threads"], host["gemm_in_cache_GFLOPps"]
    flags = [flag for flag, present in cpu["isa_flags"].items() if present and flag.startswith(("avx512_bf16", "amx"))]
    scaling = "; ".join(f"{dtype} " + " -> ".join(f"{v:.0f}" for v in rates.values()) for dtype, rates in gemm.items())
    kernels = host["onednn"].get("cases", {})
    chosen = sorted({k["impl"] for case in kernels.values() for k in case if k["kind"] in ("inner_product", "matmul")})
    caches = ", ".join(f"L{c['level']}{(c['type'] or '')[0]} {c['size']}" for c in host["caches"])
    return [
        "",
        f"Host: {cpu['model']} (family {cpu['family']} model {cpu['model_id']}), bf16 arithmetic: "
        f"{', '.join(flags) or 'none'}; {caches}; {threads['torch_threads']} threads on {threads['distinct_cores']} "
        f"cores; in-cache GEMM GFLOP/s 1 thread -> all: {scaling}; copy {host['copy_bandwidth_GBps']:.1f} GB/s; "
        f"oneDNN {host['libraries']['onednn']} GEMM kernels: {', '.join(chosen) or 'none'}.",
    ]


def stages_table(data: dict) -> list[str]:
    lines = [
        f"Per stage: `{Path(data['model']).name}` on {_where(data, str(data['threads']) + ' threads')}, {data['utc']}, "
        + _load(data),
        "",
        "| dtype | decode b1 tok/s | b4 tok/s | b16 tok/s | b16 / b1 | b1 step ms | bandwidth floor ms | step / floor "
        "| flow mel frames/s | flow s | GEMM floor s | flow / floor | vocoder samples/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        lm, flow, hift = r["lm"], r["flow"], r["hift"]
        lines.append(
            f"| {r['dtype']} | {lm['batch1']['tokens_per_s']:.1f} | {lm['batch4']['tokens_per_s']:.1f} "
            f"| {lm['batch16']['tokens_per_s']:.1f} | {lm['batch16_speedup_vs_batch1']:.2f}x "
            f"| {lm['batch1']['step_ms']:.1f} | {lm['bandwidth_floor_ms']:.1f} | {lm['batch1_ratio_to_floor']:.2f}x "
            f"| {flow['mel_frames_per_s']:.1f} | {flow['seconds']:.2f} | {flow['gemm_floor_s']:.2f} "
            f"| {flow['ratio_to_floor']:.2f}x | {hift['samples_per_s']:.0f} |"
        )
    bandwidth = ", ".join(f"{r['dtype']} {r['memory_bandwidth_GBps']:.1f} GB/s" for r in data["results"])
    gemm = ", ".join(f"{r['dtype']} {r['flow']['gemm_gflop_per_s']:.0f} GFLOP/s" for r in data["results"])
    lines += ["", f"Measured copy bandwidth: {bandwidth}; matmul at the estimator's shape: {gemm}."]
    return lines + host_line(data)


def e2e_table(data: dict) -> list[str]:
    lines = [
        f"End to end: `{Path(data['model']).name}` on {_where(data)}, 16 rows, {data['utc']}, " + _load(data),
        "",
        "| dtype | batch | wall s | audio s | RTF | LLM s | flow s | vocoder s | peak memory MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["runs"]:
        st = r["stage_seconds"]
        lines.append(
            f"| {r['dtype']} | {r['batch_size']} | {r['wall_seconds']:.2f} | {r['audio_seconds']:.2f} | {r['rtf']:.3f} "
            f"| {st['llm']:.2f} | {st['flow']:.2f} | {st['hift']:.2f} | {r['peak_memory_MB']:.0f} |"
        )
    lines.append("")
    for key, value in data["summary"].items():
        lines.append(f"- {key}: {json.dumps(value)}")
    return lines + host_line(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    for path in parser.parse_args().files:
        data = json.loads(path.read_text())
        print("\n".join(stages_table(data) if "results" in data else e2e_table(data)))
        print()


if __name__ == "__main__":
    main()
