"""Scale-out on one machine: 16 rows as 2 torchrun ranks x 1 thread against 1 process x 2 threads (wall time of each
whole command, model loading included), with a check that both wrote the same wav bytes; then the one report writer:
the merge of N synthetic rows from 2 shard reports (`merge-reports`' code), timed.

    python benchmarks/bench_scaleout.py --model demo --rows 16 --merge-rows 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "examples" / "prompts"
WORDS = ["the", "river", "trains", "weather", "morning", "evening", "station", "window", "garden", "letter"]


def write_manifest(path: Path, rows: int) -> None:
    """`rows` rows over the two example prompts, targets of 4 to 9 words."""
    prompts = [
        (PROMPTS / "stella_16k.wav", "Please call Stella and ask her to bring these things with her from the store."),
        (PROMPTS / "canoe_44k.wav", "The birch canoe slid on the smooth planks."),
    ]
    lines = ["id,prompt_audio,prompt_text,target_text"]
    for i in range(rows):
        audio, text = prompts[i % 2]
        target = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(4 + i % 6)).capitalize() + "."
        lines.append(f'row{i:05d},{audio},{text},"{target}"')
    path.write_text("\n".join(lines) + "\n")


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return time.perf_counter() - start


def wav_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.wav"))}


def bench_ranks(model: str, rows: int, work: Path) -> dict:
    """1 process x 2 threads, then torchrun 2 ranks x 1 thread, on the same manifest."""
    manifest = work / "manifest.csv"
    write_manifest(manifest, rows)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    synth = ["-m", "voiceclone", "synth", str(manifest), "--model", model, "--quiet"]
    one = timed([sys.executable, *synth, "--out", str(work / "one"), "--threads", "2"], env)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = timed([*launcher, *synth, "--out", str(work / "two"), "--threads", "1"], env)
    same = wav_bytes(work / "one") == wav_bytes(work / "two")
    audio = json.loads((work / "one" / "summary.json").read_text())["audio_seconds"]
    return {
        "rows": rows,
        "audio_seconds": audio,
        "one_process_2_threads_s": round(one, 2),
        "two_ranks_1_thread_s": round(two, 2),
        "ratio_one_over_two": round(one / two, 3),
        "rows_per_hour": {"one_process": round(rows * 3600 / one), "two_ranks": round(rows * 3600 / two)},
        "identical_wavs": same,
    }


def bench_merge(rows: int, work: Path) -> dict:
    """Write 2 shard reports of `rows` synthetic ok rows, then merge them into the one report, timed."""
    from voiceclone.io.manifest import Row
    from voiceclone.io.report import ReportRow, report_jsonl_text
    from voiceclone.shards import Shard, merge, shard_of, write_merged

    out = work / "merge"
    out.mkdir()
    ids = [f"utt{i:07d}" for i in range(rows)]
    timings = {"frontend": 0.01, "llm": 0.5, "flow": 1.2, "hift": 0.1, "total": 1.81}
    for index in range(2):
        entries = [
            ReportRow(i, "ok", wav=f"{i}.wav", duration_s=1.68, sample_rate=24000, num_samples=40320, timings=timings)
            for i in ids
            if shard_of(i, 2) == index
        ]
        (out / Shard(index, 2).report).write_text(report_jsonl_text(entries))
    manifest = [Row(i, Path("p.wav"), "prompt", "target") for i in ids]
    start = time.perf_counter()
    merged = merge(out, manifest)
    merge_s = time.perf_counter() - start
    write_merged(out, merged)
    total = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.iterdir())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "rows": rows,
        "read_and_merge_s": round(merge_s, 2),
        "with_writing_report_s": round(total, 2),
        "report_bytes": size,
        "peak_rss_bytes": peak,
        "missing": len(merged.missing),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="demo, or a full-size folder from make_model.py")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--merge-rows", type=int, default=100000, help="0: skip the merge benchmark")
    parser.add_argument("--skip-ranks", action="store_true", help="only the merge benchmark")
    args = parser.parse_args()
    result = {"load_average": os.getloadavg(), "cpus": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_ranks:
            result["ranks"] = bench_ranks(args.model, args.rows, Path(tmp))
            r = result["ranks"]
            print(
                f"{args.rows} rows, {args.model}: 1 process x 2 threads {r['one_process_2_threads_s']} s, "
                f"2 ranks x 1 thread {r['two_ranks_1_thread_s']} s, ratio {r['ratio_one_over_two']} "
                f"(identical wavs: {r['identical_wavs']}; they differ by the last bit where the thread counts differ)"
            )
        if args.merge_rows:
            result["merge"] = m = bench_merge(args.merge_rows, Path(tmp))
            print(
                f"merge of {m['rows']} rows from 2 shard reports: {m['read_and_merge_s']} s, with writing the report "
                f"{m['with_writing_report_s']} s, peak RSS {m['peak_rss_bytes'] / 1e6:.0f} MB"
            )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
