"""`synth --backend ray` on a local Ray cluster (`ray.init(num_cpus=2)`) equals the one-process run, wav byte for wav
byte and report row for row (timings aside), and `--resume` through Ray keeps every finished row. Without the `ray`
extra these tests skip, and `--backend ray` exits 2 with the install line."""

from __future__ import annotations

import importlib.util
import json

import pytest
from test_scaleout import assert_same_run, keep_torch_threads, synth_args, write_manifest  # noqa: F401
from typer.testing import CliRunner

from voiceclone.cli import app

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="the ray extra is not installed: pip install -e '.[ray]'")


def test_backend_ray_without_the_extra_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    manifest = write_manifest(tmp_path)
    result = CliRunner().invoke(app, synth_args(manifest, tmp_path / "out", "--backend", "ray"))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --backend ray needs Ray: pip install 'voiceclone[ray]' (or pip install 'ray[data]==2.60.0')"
    ]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@needs_ray
def test_ray_run_equals_one_process_and_resumes(local_ray, tmp_path, tmp_path_factory):
    manifest = write_manifest(tmp_path)
    runner = CliRunner()
    reference = tmp_path / "one"
    assert runner.invoke(app, synth_args(manifest, reference)).exit_code == 0
    out = tmp_path / "ray"
    result = runner.invoke(app, synth_args(manifest, out, "--backend", "ray", "--workers", "2", "--batch-size", "3"))
    assert result.exit_code == 0, result.output
    assert_same_run(out, reference)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["made"] == summary["rows"]
    # drop two rows from the report: --resume through Ray makes exactly those again, byte for byte
    lines = (out / "report.jsonl").read_text().splitlines()
    (out / "report.jsonl").write_text("\n".join(lines[2:]) + "\n")
    for name in ("row0.wav", "row1.wav"):
        (out / name).unlink()
    again = runner.invoke(app, synth_args(manifest, out, "--backend", "ray", "--resume"))
    assert again.exit_code == 0, again.output
    assert_same_run(out, reference)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["made"] == 2 and summary["reused"] == summary["rows"] - 2
