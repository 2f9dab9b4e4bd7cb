"""Startup cost of each light command: wall and CPU seconds (medians over fresh processes), peak RSS, and which heavy
modules it imports (from `python -X importtime`), written as JSON. The demo model and a converted copy are built
first, in a child process: this process never imports torch, so its children's peak RSS is their own.

    python benchmarks/bench_startup.py --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MANIFEST = REPO / "examples" / "manifest.csv"
HEAVY = ("torch", "torchaudio", "onnxruntime", "librosa")


def commands(work: Path, converted: Path, official: Path) -> dict[str, list[str]]:
    """Each light command as a user types it (after `voiceclone`)."""
    return {
        "--help": ["--help"],
        "--version": ["--version"],
        "synth --help": ["synth", "--help"],
        "check-durations": ["check-durations", str(REPO / "examples" / "reference"), "--manifest", str(MANIFEST)],
        "synth --dry-run (demo)": ["synth", str(MANIFEST), "--model", "demo", "--out", str(work / "o"), "--dry-run"],
        "synth --dry-run --resume (converted)": (
            ["synth", str(MANIFEST), "--model", str(converted), "--out", str(work / "o"), "--dry-run", "--resume"]
        ),
        "inspect (converted)": ["inspect", str(converted)],
        "merge-reports (no shard finished: exit 1)": ["merge-reports", str(work), "--manifest", str(MANIFEST)],
        "inspect (official: reads the .pt weights with torch)": ["inspect", str(official)],
    }


PREPARE = """
import json, sys, torch
from floors import machine, results_tag
from voiceclone.loading.convert import convert
from voiceclone.loading.load import resolve_model
official = resolve_model("demo")
converted = convert(official, sys.argv[1])
print(json.dumps([str(official), str(converted), machine(torch.device("cpu")), results_tag(torch.device("cpu"))]))
"""


def run_once(argv: list[str]) -> dict:
    """Wall and CPU seconds, peak RSS bytes and exit code of `python ARGV` in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall": wall, "cpu": cpu, "rss": usage.ru_maxrss * 1024, "code": os.waitstatus_to_exitcode(status)}


def measure(argv: list[str], repeat: int) -> dict:
    """Medians over `repeat` fresh processes (after one that warms the file cache)."""
    runs = [run_once(argv) for _ in range(repeat + 1)][1:]
    return {
        "wall_s": round(statistics.median(r["wall"] for r in runs), 3),
        "cpu_s": round(statistics.median(r["cpu"] for r in runs), 3),
        "peak_rss_mb": round(max(r["rss"] for r in runs) / 2**20, 1),
        "exit_code": runs[0]["code"],
    }


def heavy_imports(args: list[str]) -> list[str]:
    """The heavy modules `python -X importtime -m voiceclone ARGS` imports."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "voiceclone", *args], cwd=REPO, capture_output=True, text=True
    )
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return [name for name in HEAVY if name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per command (medians are kept)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepared = subprocess.run(
            [sys.executable, "-c", PREPARE, str(work / "converted")], cwd=HERE, capture_output=True, text=True
        )
        if prepared.returncode:
            sys.exit(prepared.stderr)
        official, converted, host, tag = json.loads(prepared.stdout.splitlines()[-1])
        results = {"python -c pass": measure(["-c", "pass"], args.repeat)}
        results["python -c 'import torch'"] = measure(["-c", "import torch"], args.repeat)
        for name, argv in commands(work, Path(converted), Path(official)).items():
            results[name] = {**measure(["-m", "voiceclone", *argv], args.repeat), "imports": heavy_imports(argv)}
        for name, row in results.items():
            imports = f"  heavy imports: {row['imports']}" if "imports" in row else ""
            cost = f"{row['wall_s']:6.3f} s wall {row['cpu_s']:6.3f} s CPU {row['peak_rss_mb']:6.1f} MB"
            print(f"{name:55s} {cost}{imports}")
    report = {
        "host": {**host, "cpu_count": os.cpu_count(), "load_average_after": os.getloadavg()},
        "python": sys.version.split()[0],
        "repeat": args.repeat,
        "commands": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"startup-{tag}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
