"""The command line: exit codes and one-line errors, refusing existing outputs, dry runs, and a real demo run."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from voiceclone import __version__
from voiceclone.cli import app
from voiceclone.files import temp_name_for
from voiceclone.seeds import row_seed

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
IDS = ["greeting", "weather", "yes", "callback"]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def stderr_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"voiceclone {__version__}"


def test_bad_manifest_exits_2_with_located_lines(tmp_path: Path):
    shutil.copytree(EXAMPLES / "prompts", tmp_path / "prompts")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "id,prompt_audio,prompt_text,target_text\n"
        "a,prompts/stella_16k.wav,Hi.,Bye.\n"
        "b,prompts/a.wav,Hi.,Bye.\n"
        "a,prompts/stella_16k.wav,Hi.,\n"
    )
    result = invoke("synth", manifest, "--model", "demo", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert stderr_lines(result) == [
        f"error: {manifest}:3: prompt_audio: file not found: prompts/a.wav",
        f"error: {manifest}:4: target_text: empty",
        f"error: {manifest}:4: id: duplicate id 'a' (first on line 2)",
        f"error: 3 problems in {manifest}",
    ]
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_a_target_with_nothing_to_speak_fails_validation_and_the_dry_run(tmp_path: Path):
    shutil.copytree(EXAMPLES / "prompts", tmp_path / "prompts")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "id,prompt_audio,prompt_text,target_text\na,prompts/stella_16k.wav,Hi.,Bye.\nb,prompts/stella_16k.wav,Hi.,?!\n"
    )
    for extra in ([], ["--dry-run"]):
        result = invoke("synth", manifest, "--model", tmp_path / "no-model", "--out", tmp_path / "out", *extra)
        assert result.exit_code == 2, result.output  # refused before the (missing) model is looked at
        assert stderr_lines(result) == [
            f"error: {manifest}:3: target_text: nothing to speak (only punctuation and symbols): ?!"
        ]
        assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2(tmp_path: Path):
    m = EXAMPLES / "manifest.csv"
    out = tmp_path / "out"
    both = invoke("synth", m, "--model", "demo", "--out", out, "--resume", "--force")
    assert both.exit_code == 2 and "--resume and --force exclude each other" in both.output
    assert invoke("synth", m, "--model", "demo", "--out", out, "--batch-size", "0").exit_code == 2
    assert invoke("synth", m, "--model", "demo", "--out", out, "--wav-format", "mp3").exit_code == 2
    assert invoke("synth", m, "--model", "demo", "--out", out, "--format", "xml").exit_code == 2
    assert invoke("synth", m, "--out", out).exit_code == 2  # --model is required
    wrong = invoke("synth", m, "--model", "demo", "--out", out, "--format", "jsonl")
    assert wrong.exit_code == 2 and f"{m}:1: invalid JSON" in wrong.output
    assert not out.exists()


def test_missing_model_exits_3(tmp_path: Path):
    result = invoke("synth", EXAMPLES / "manifest.csv", "--model", tmp_path / "no-model", "--out", tmp_path / "out")
    assert result.exit_code == 3
    assert stderr_lines(result) == [f"error: {tmp_path / 'no-model'}: model directory does not exist"]
    assert not (tmp_path / "out").exists()
    dry = invoke("synth", EXAMPLES / "manifest.csv", "--model", tmp_path, "--out", tmp_path / "out", "--dry-run")
    assert dry.exit_code == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_exits_4(tmp_path: Path):
    result = invoke("synth", EXAMPLES / "manifest.csv", "--model", "demo", "--out", tmp_path / "o", "--device", "cuda")
    assert result.exit_code == 4 and "CUDA is not available" in result.output
    assert len(stderr_lines(result)) == 1 and not (tmp_path / "o").exists()


def test_existing_outputs_are_refused(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "yes.wav").write_bytes(b"keep me")
    result = invoke("synth", EXAMPLES / "manifest.csv", "--model", "demo", "--out", out)
    assert result.exit_code == 2
    assert stderr_lines(result) == [
        f"error: {out}: already holds outputs (yes.wav); pass --resume to continue or --force to overwrite"
    ]
    assert (out / "yes.wav").read_bytes() == b"keep me" and sorted(os.listdir(out)) == ["yes.wav"]
    dry = invoke("synth", EXAMPLES / "manifest.csv", "--model", "demo", "--out", out, "--dry-run")
    assert dry.exit_code == 2


def test_dry_run_validates_and_writes_nothing(tmp_path: Path):
    result = invoke("synth", EXAMPLES / "manifest.lst", "--model", "demo", "--out", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert (
        "dry run: 4 rows valid (2 distinct prompts, 0 with an explicit seed, 4 with reference audio)" in result.output
    )
    assert not (tmp_path / "out").exists()


def test_synth_demo_on_the_examples_then_check_durations(tmp_path: Path):
    """A real run on the bundled demo model, checked against examples/reference (test_resume runs `python -m`)."""
    out = tmp_path / "out"
    run = invoke("synth", EXAMPLES / "manifest.jsonl", "--model", "demo", "--out", out, "--batch-size", "3")
    assert run.exit_code == 0, run.output
    assert "demo has random weights: its audio is noise" in run.output
    assert "synth: 4/4 rows (0 failed)" in run.output  # plain progress lines when not on a terminal
    assert sorted(os.listdir(out)) == sorted([f"{i}.wav" for i in IDS] + ["report.csv", "report.jsonl", "summary.json"])
    report = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    assert [r["id"] for r in report] == IDS and {r["status"] for r in report} == {"ok"}
    for r in report:
        info = sf.info(out / f"{r['id']}.wav")
        assert info.samplerate == r["sample_rate"] == 24000 and info.subtype == "PCM_16"
        assert info.frames == r["num_samples"] and r["speech_tokens"] * 960 == r["num_samples"]
        assert r["min_tokens"] <= r["speech_tokens"] <= r["max_tokens"] and r["stop_reason"] in ("eos", "max_len")
        assert r["text_tokens"] > 0 and r["prompt_text_tokens"] > r["text_tokens"] // 4 and r["seed"] >= 0
        assert set(r["timings"]) >= {"llm", "flow", "hift"}
        # the demo model is deterministic: the same length as the wavs the quickstart is checked against
        assert info.frames == sf.info(EXAMPLES / "reference" / f"{r['id']}.wav").frames
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 4 and summary["failed"] == 0 and summary["sample_rate"] == 24000
    assert summary["model"] == "demo" and summary["batch_size"] == 3 and summary["device"] == "cpu"
    check = invoke("check-durations", out, "--manifest", EXAMPLES / "manifest.csv", "--junit", tmp_path / "j.xml")
    assert check.exit_code == 0, check.output
    assert "PASS: 4 rows, 0 failed (0 missing), 0 with warnings" in check.output  # the quickstart passes cleanly
    assert {r["stop_reason"] for r in report} == {"eos"}
    again = invoke("synth", EXAMPLES / "manifest.jsonl", "--model", "demo", "--out", out)
    assert again.exit_code == 2 and "already holds outputs" in again.output


class FakeEngine:
    """Stands in for the engine: a 0.5 s tone per row, a failure for rows whose text says FAIL."""

    requests: list = []
    stop_after: int | None = None  # after this many rows, interrupt the run ...
    stop_by = "ctrl-c"  # ... as Ctrl-C does, or with a real SIGTERM to this process

    def __init__(self, model, settings):
        self.settings = settings
        self.stats = {}

    def run(self, requests):
        from voiceclone.engine.engine import SynthResult

        for request in requests:
            if FakeEngine.stop_after is not None and len(FakeEngine.requests) == FakeEngine.stop_after:
                if FakeEngine.stop_by == "ctrl-c":
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signal.SIGTERM)
            FakeEngine.requests.append(request)
            if "FAIL" in request.target_text:
                yield SynthResult(id=request.id, error="RuntimeError: the LLM produced nothing")
                continue
            wav = 0.3 * np.sin(np.arange(12000) / 24000 * 2 * np.pi * 200).astype(np.float32)
            yield SynthResult(
                id=request.id, wav=wav, sample_rate=24000, text_tokens=5, prompt_text_tokens=9,
                speech_tokens=[1] * 12, min_tokens=10, max_tokens=100, stop_reason="eos", segments=1,
                timings={"llm": 0.1, "total": 0.2},
            )  # fmt: skip


@pytest.fixture
def fake_model(monkeypatch, tmp_path_factory):
    """`--model m` is a stand-in: an empty folder with a fixed model id, a config, and `FakeEngine`."""
    from voiceclone.engine import engine
    from voiceclone.loading import config, layout, load

    folder = tmp_path_factory.mktemp("fake-model")
    model = SimpleNamespace(model_id="fake-1", config=SimpleNamespace(sample_rate=24000, token_frame_rate=25))
    model.loads = 0

    def load_model(*args, **kwargs):
        model.loads += 1
        return model

    monkeypatch.setattr(load, "resolve_model", lambda name, allow_download=False: folder)
    monkeypatch.setattr(layout, "model_id_of", lambda model_dir, llm_file="llm.pt": model.model_id)
    monkeypatch.setattr(load, "load_model", load_model)
    monkeypatch.setattr(config, "read_config", lambda *args, **kwargs: model.config)
    monkeypatch.setattr(engine, "Engine", FakeEngine)
    FakeEngine.requests, FakeEngine.stop_after, FakeEngine.stop_by = [], None, "ctrl-c"
    return model


def test_failed_rows_are_recorded_the_run_goes_on_and_exit_is_1(tmp_path: Path, fake_model):
    shutil.copytree(EXAMPLES / "prompts", tmp_path / "prompts")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "id,prompt_audio,prompt_text,target_text,seed\n"
        "a,prompts/stella_16k.wav,Hi.,One.,\n"
        "b,prompts/stella_16k.wav,Hi.,FAIL here.,12345\n"
        "c,prompts/canoe_44k.wav,Hi.,Three.,\n"
    )
    out = tmp_path / "out"
    result = invoke("synth", manifest, "--model", "m", "--out", out, "--seed", "7", "--wav-format", "float")
    assert result.exit_code == 1, result.output
    assert "done: 2 ok, 1 failed" in result.output
    report = {r["id"]: r for r in map(json.loads, (out / "report.jsonl").read_text().splitlines())}
    assert report["b"]["status"] == "failed" and report["b"]["error"] == "RuntimeError: the LLM produced nothing"
    assert report["a"]["status"] == report["c"]["status"] == "ok" and not (out / "b.wav").exists()
    assert sf.info(out / "a.wav").subtype == "FLOAT" and report["a"]["duration_s"] == 0.5
    assert report["a"]["rtf"] == 0.4 and report["a"]["speech_tokens"] == 12 and report["a"]["peak"] > 0.29
    assert report["a"]["longest_token_run"] == 12 and report["a"]["stop_reason"] == "eos"
    seeds = {r.id: r.seed for r in FakeEngine.requests}
    assert seeds == {"a": row_seed(7, "a"), "b": 12345, "c": row_seed(7, "c")}
    assert {i: report[i]["seed"] for i in seeds} == seeds
    assert json.loads((out / "summary.json").read_text())["wav_format"] == "float"

    # --force redoes every row, and a row that now fails loses its old wav (no stale audio beside a failure)
    manifest.write_text(manifest.read_text().replace("Three.", "FAIL now."))
    forced = invoke("synth", manifest, "--model", "m", "--out", out, "--seed", "7", "--force", "--quiet")
    assert forced.exit_code == 1 and forced.output == ""
    assert not (out / "c.wav").exists() and (out / "a.wav").exists()


def test_resume_redoes_rows_whose_inputs_changed(tmp_path: Path, fake_model):
    shutil.copytree(EXAMPLES / "prompts", tmp_path / "prompts")
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"id": i, "prompt_audio": "prompts/stella_16k.wav", "prompt_text": "Hi.", "text": f"Row {i}."} for i in "abc"
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert invoke("synth", manifest, "--model", "m", "--out", out).exit_code == 0
    rows[1]["text"] = "Row b, edited."
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    FakeEngine.requests = []
    assert invoke("synth", manifest, "--model", "m", "--out", out, "--resume").exit_code == 0
    assert [r.id for r in FakeEngine.requests] == ["b"]
    FakeEngine.requests = []
    assert invoke("synth", manifest, "--model", "m", "--out", out, "--resume", "--seed", "1").exit_code == 0
    assert sorted(r.id for r in FakeEngine.requests) == ["a", "b", "c"]  # a new base seed changes every row
    assert json.loads((out / "summary.json").read_text())["reused"] == 0


def three_rows(folder: Path) -> Path:
    shutil.copytree(EXAMPLES / "prompts", folder / "prompts")
    manifest = folder / "m.lst"
    manifest.write_text("".join(f"{i}|Hi.|prompts/stella_16k.wav|Row {i}.\n" for i in "abc"))
    return manifest


@pytest.mark.parametrize("stop_by", ["ctrl-c", "sigterm"])
def test_interrupt_exits_130_with_complete_reports_and_resume_continues(tmp_path: Path, fake_model, stop_by):
    manifest, out = three_rows(tmp_path), tmp_path / "out"
    FakeEngine.stop_after, FakeEngine.stop_by = 1, stop_by
    handler_before = signal.getsignal(signal.SIGTERM)
    result = invoke("synth", manifest, "--model", "m", "--out", out)
    assert result.exit_code == 130, result.output
    assert "interrupted: finished rows are kept" in result.output
    report = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    assert [(r["id"], r["status"]) for r in report] == [("a", "ok"), ("b", "skipped"), ("c", "skipped")]
    assert report[1]["error"] == "interrupted before this row finished" and report[1]["seed"] == row_seed(0, "b")
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True
    assert sorted(os.listdir(out)) == ["a.wav", "report.csv", "report.jsonl", "summary.json"]
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the handler is only set during the run
    state = ((out / "a.wav").stat().st_mtime_ns, (out / "a.wav").read_bytes())
    FakeEngine.requests, FakeEngine.stop_after = [], None
    assert invoke("synth", manifest, "--model", "m", "--out", out, "--resume").exit_code == 0
    assert [r.id for r in FakeEngine.requests] == ["b", "c"]
    assert ((out / "a.wav").stat().st_mtime_ns, (out / "a.wav").read_bytes()) == state


def test_resume_redoes_a_damaged_or_missing_wav(tmp_path: Path, fake_model):
    manifest, out = three_rows(tmp_path), tmp_path / "out"
    assert invoke("synth", manifest, "--model", "m", "--out", out).exit_code == 0
    (out / "a.wav").write_bytes((out / "a.wav").read_bytes()[:500])
    (out / "b.wav").unlink()
    left = temp_name_for(out / "c.wav")
    left.write_bytes(b"left by a killed run")
    FakeEngine.requests = []
    assert invoke("synth", manifest, "--model", "m", "--out", out, "--resume").exit_code == 0
    assert [r.id for r in FakeEngine.requests] == ["a", "b"]
    assert sf.info(out / "a.wav").frames == 12000 and not left.exists()


def test_a_dry_run_checks_every_flag_the_run_checks(tmp_path: Path):
    for flags, message in [
        (["--threads", "0"], "error: --threads must be at least 1, got 0"),
        (["--limit", "0"], "error: --limit must be at least 1, got 0"),
        (["--ids", "greeting,nobody"], "error: --ids: 1 id(s) not among the 4 rows: 'nobody'"),
        (["--device", "tpu"], "error: --device: unknown device 'tpu' (choose auto, cpu, cuda or cuda:N)"),
    ]:
        for dry in ([], ["--dry-run"]):
            result = invoke(
                "synth", EXAMPLES / "manifest.csv", "--model", "demo", "--out", tmp_path / "o", *flags, *dry
            )
            assert result.exit_code == 2 and stderr_lines(result) == [message], (flags, dry, result.output)
    assert not (tmp_path / "o").exists()


def test_dry_run_with_resume_counts_the_rows_kept_and_redone(tmp_path: Path, fake_model, v3_model_dir: Path):
    manifest, out = three_rows(tmp_path), tmp_path / "out"
    assert invoke("synth", manifest, "--model", v3_model_dir, "--out", out).exit_code == 0
    manifest.write_text(manifest.read_text().replace("Row b.", "Row b, edited."))
    (out / "c.wav").unlink()
    dry = invoke("synth", manifest, "--model", v3_model_dir, "--out", out, "--resume", "--dry-run")
    assert dry.exit_code == 0 and dry.output.rstrip().endswith("--resume: 1 rows kept, 2 to make"), dry.output
    FakeEngine.requests = []
    assert invoke("synth", manifest, "--model", v3_model_dir, "--out", out, "--resume").exit_code == 0
    assert [r.id for r in FakeEngine.requests] == ["b", "c"]  # what the dry run said


def test_resuming_a_finished_run_loads_no_model_and_keeps_the_totals(tmp_path: Path, fake_model):
    manifest, out = three_rows(tmp_path), tmp_path / "out"
    first = invoke("synth", manifest, "--model", "m", "--out", out)
    assert first.exit_code == 0 and fake_model.loads == 1
    before = json.loads((out / "summary.json").read_text())
    # one RTF: 0.2 s of synthesis per 0.5 s row, in the progress line, the closing line and summary.json
    assert before["rtf"] == 0.4 and "RTF 0.40, ETA" in first.output and "1.5 s audio, RTF 0.40;" in first.output
    FakeEngine.requests = []
    again = invoke("synth", manifest, "--model", "m", "--out", out, "--resume")
    assert again.exit_code == 0 and fake_model.loads == 1 and FakeEngine.requests == []
    after = json.loads((out / "summary.json").read_text())
    assert after["rtf"] == 0.4 and after["reused"] == 3 and after["made"] == 0 and after["ok"] == 3
    assert (after["audio_seconds"], after["synthesis_seconds"]) == (before["audio_seconds"], 0.6)
    assert "done: 3 ok, 0 failed, 3 kept from an earlier run; 1.5 s audio, RTF 0.40;" in again.output


def test_a_new_text_normaliser_redoes_the_rows(tmp_path: Path, fake_model, monkeypatch):
    from voiceclone import synth

    manifest, out = three_rows(tmp_path), tmp_path / "out"
    assert invoke("synth", manifest, "--model", "m", "--out", out).exit_code == 0
    assert json.loads((out / "summary.json").read_text())["text_frontend"].startswith("wetext-0.1.8+inflect-")
    monkeypatch.setattr(synth, "frontend_id", lambda enabled: "wetext-9.9" if enabled else "verbatim")
    FakeEngine.requests = []
    assert invoke("synth", manifest, "--model", "m", "--out", out, "--resume").exit_code == 0
    assert sorted(r.id for r in FakeEngine.requests) == ["a", "b", "c"]


def test_limit_and_ids_run_a_subset_and_the_summary_says_so(tmp_path: Path, fake_model):
    manifest, out = three_rows(tmp_path), tmp_path / "out"
    (tmp_path / "ids.txt").write_text("c\na\n")
    result = invoke(
        "synth", manifest, "--model", "m", "--out", out, "--ids", f"@{tmp_path / 'ids.txt'}", "--limit", "1"
    )
    assert result.exit_code == 0 and "(a subset: 1 of 3 rows)" in result.output
    assert [r.id for r in FakeEngine.requests] == ["a"]
    assert [json.loads(line)["id"] for line in (out / "report.jsonl").read_text().splitlines()] == ["a"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 1 and summary["subset"] == {"limit": 1, "ids": 2, "of": 3, "rows": 1}
    # a larger subset resumes it; a subset never shrinks a report (the wavs of dropped rows would lose their entries)
    assert invoke("synth", manifest, "--model", "m", "--out", out, "--limit", "2", "--resume").exit_code == 0
    for flags, dropped in [
        (["--limit", "1", "--resume"], 1),
        (["--ids", "c", "--force"], 2),
        (["--ids", "c", "--resume", "--dry-run"], 2),
    ]:
        refused = invoke("synth", manifest, "--model", "m", "--out", out, *flags)
        assert refused.exit_code == 2 and stderr_lines(refused) == [
            f"error: {out}: its report holds {dropped} rows outside --limit/--ids, which this run's report would drop; "
            "choose another --out or run without --limit/--ids"
        ], flags
    assert len((out / "report.jsonl").read_text().splitlines()) == 2
    # validation still reads the whole manifest: a bad last row stops a run of the first row
    manifest.write_text(manifest.read_text() + "d|Hi.|prompts/none.wav|Row d.\n")
    bad = invoke("synth", manifest, "--model", "m", "--out", tmp_path / "o2", "--limit", "1")
    assert bad.exit_code == 2 and "prompt_audio: file not found" in bad.output
