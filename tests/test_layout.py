"""The package layout: no import cycle; the data modules, the run lifecycle and the CLI load without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchaudio", "librosa", "onnxruntime")


def import_graph() -> dict[str, set[str]]:
    """Module -> the voiceclone modules it imports, at the top or inside a function."""
    modules = {}
    for path in (REPO / "voiceclone").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                deps |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
        graph[name] = {dep for dep in deps if dep in modules and dep not in (name, "voiceclone")}
    return graph


def test_no_import_cycle():
    graph = import_graph()
    assert "voiceclone.engine.engine" in graph and "voiceclone.io.manifest" in graph
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join(path[path.index(dep) :] + [dep])}"
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_data_modules_and_the_command_line_load_without_torch():
    modules = ["voiceclone.io.manifest", "voiceclone.io.audio", "voiceclone.io.report", "voiceclone.cli"]
    modules += ["voiceclone.synth", "voiceclone.durations", "voiceclone.progress", "voiceclone.io.subset"]
    modules += ["voiceclone.loading.layout", "voiceclone.loading.convert", "voiceclone.usage", "voiceclone.dryrun"]
    modules += ["voiceclone.shards", "voiceclone.distributed", "voiceclone.raybackend", "voiceclone.outdir"]
    code = f"import sys, {', '.join(modules)}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


PROBE = """
import runpy, sys
heavy, sys.argv = sys.argv[1].split(","), ["voiceclone", *sys.argv[2:]]
code = 0
try:
    runpy.run_module("voiceclone", run_name="__main__")
except SystemExit as stop:
    code = stop.code
print("heavy imports:", sorted(m for m in heavy if m in sys.modules), "exit:", code)
"""


def heavy_imports(*args: str) -> tuple[list[str], int]:
    """The heavy modules `voiceclone ARGS` imports in a fresh process, and its exit code."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(HEAVY), *args], cwd=REPO, capture_output=True, text=True, check=True
    )
    last = done.stdout.splitlines()[-1]
    assert last.startswith("heavy imports: "), done.stdout + done.stderr
    imported, code = last.removeprefix("heavy imports: ").split(" exit: ")
    return ast.literal_eval(imported), int(code)


def test_light_commands_import_no_model_library(tmp_path: Path, v3_model_dir: Path):
    """--help, --version, check-durations, merge-reports, the dry run (with --resume too) and inspect of a converted
    folder start without torch, torchaudio, librosa or onnxruntime; reading an official folder's .pt weights needs
    torch."""
    from voiceclone.loading.convert import convert

    converted = convert(v3_model_dir, tmp_path / "converted")
    manifest = str(REPO / "examples" / "manifest.csv")
    out = str(tmp_path / "out")
    for args in [
        ["--help"],
        ["--version"],
        ["synth", "--help"],
        ["check-durations", str(REPO / "examples" / "reference"), "--manifest", manifest, "--quiet"],
        ["synth", manifest, "--model", "demo", "--out", out, "--dry-run"],
        ["synth", manifest, "--model", str(converted), "--out", out, "--dry-run", "--resume"],
        ["synth", manifest, "--model", str(v3_model_dir), "--out", out, "--dry-run", "--device", "cpu"],
        ["inspect", str(converted)],
    ]:
        assert heavy_imports(*args) == ([], 0), args
    assert heavy_imports("merge-reports", str(tmp_path), "--manifest", manifest) == ([], 1)  # no shard finished
    assert "torch" in heavy_imports("inspect", str(v3_model_dir))[0]
