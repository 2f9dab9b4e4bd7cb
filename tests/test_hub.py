"""`--model ORG/NAME`: lookups in fake Hugging Face and ModelScope caches (real layouts), downloads, and the CLI.

No test touches the network: the caches are built in temp folders, and downloads go through stand-ins for the hub
libraries' snapshot_download."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voiceclone.cli import app
from voiceclone.errors import ModelError
from voiceclone.loading import hub

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
V3_ID = "FunAudioLLM/Fun-CosyVoice3-0.5B-2512"
V2_ID = "FunAudioLLM/CosyVoice2-0.5B"
MS_ID = "iic/CosyVoice2-0.5B"


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def write_hf_snapshot(cache: Path, repo_id: str, src: Path, commit: str) -> Path:
    """`src`'s files as huggingface_hub stores them: blobs named by hash, snapshot links, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / file.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def fake_hub_download(src: Path, commit: str, calls: list | None = None):
    """A stand-in for huggingface_hub.snapshot_download: local lookups go to the real one, downloads copy `src`."""
    import huggingface_hub

    real = huggingface_hub.snapshot_download

    def snapshot_download(repo_id, cache_dir=None, local_files_only=False, **kwargs):
        if local_files_only:
            return real(repo_id, cache_dir=cache_dir, local_files_only=True, **kwargs)
        if calls is not None:
            calls.append((repo_id, Path(cache_dir)))
        return str(write_hf_snapshot(Path(cache_dir), repo_id, src, commit))

    return snapshot_download


@pytest.fixture
def caches(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """Empty HF (via HF_HOME) and ModelScope caches in tmp_path; returns (HF hub cache, ModelScope cache)."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    return tmp_path / "hf-home" / "hub", tmp_path / "ms-cache"


@pytest.fixture
def small_model(tmp_path: Path) -> Path:
    folder = tmp_path / "src-model"
    (folder / "CosyVoice-BlankEN").mkdir(parents=True)
    (folder / "cosyvoice3.yaml").write_text("sample_rate: 24000\n")
    (folder / "CosyVoice-BlankEN" / "config.json").write_text("{}\n")
    return folder


def test_what_counts_as_a_hub_id(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for repo_id in (V3_ID, V2_ID, MS_ID, "a/b", "org_1/name.v2"):
        assert hub.is_hub_id(repo_id), repo_id
    for path in ("demo", "a/b/c", "/abs/name", "~/models", "../x", "org/..", "./org", "org/", ".org/name", "a b/c"):
        assert not hub.is_hub_id(path), path
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not hub.is_hub_id("org/name")  # an existing path always wins
    assert hub.model_dir("org/name") == Path("org/name")


def test_hf_cache_gives_the_snapshot_and_its_commit(caches, small_model: Path, monkeypatch):
    hf_cache, _ = caches
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = write_hf_snapshot(hf_cache, V3_ID, small_model, commit)
    found = hub.resolve(V3_ID)
    assert found == hub.HubModel(snapshot, V3_ID, "hf", commit)
    assert (found.path / "CosyVoice-BlankEN" / "config.json").read_text() == "{}\n"
    # HF_HUB_CACHE wins over HF_HOME, as in huggingface_hub
    other = caches[0].parent.parent / "elsewhere"
    monkeypatch.setenv("HF_HUB_CACHE", str(other))
    with pytest.raises(ModelError):
        hub.resolve(V3_ID)
    moved = write_hf_snapshot(other, V3_ID, small_model, "f" * 40)
    assert hub.resolve(V3_ID) == hub.HubModel(moved, V3_ID, "hf", "f" * 40)


def test_modelscope_cache_layouts_and_revision(caches, small_model: Path):
    _, ms_cache = caches
    legacy = ms_cache / "iic" / "CosyVoice2-0.5B"  # modelscope before the models/ folder
    shutil.copytree(small_model, legacy)
    assert hub.resolve(MS_ID) == hub.HubModel(legacy, MS_ID, "modelscope", None)
    current = ms_cache / "models" / "iic" / "CosyVoice2-0___5B"  # today: dots written ___ under models/
    shutil.copytree(small_model, current)
    (current / ".mv").write_text("Revision:v2.0.1,CreatedAt:1735689600")
    assert hub.resolve(MS_ID) == hub.HubModel(current, MS_ID, "modelscope", "v2.0.1")
    # a folder holding only modelscope's bookkeeping (an interrupted download) is not a model
    empty = ms_cache / "models" / "FunAudioLLM" / "CosyVoice2-0___5B"
    empty.mkdir(parents=True)
    (empty / ".msc").write_bytes(b"\x80")
    with pytest.raises(ModelError):
        hub.resolve(V2_ID)


def test_hf_cache_is_searched_before_modelscope(caches, small_model: Path):
    hf_cache, ms_cache = caches
    shutil.copytree(small_model, ms_cache / "models" / "FunAudioLLM" / "CosyVoice2-0___5B")
    snapshot = write_hf_snapshot(hf_cache, V2_ID, small_model, "a" * 40)
    assert hub.resolve(V2_ID).path == snapshot


def test_an_id_in_no_cache_is_one_line_with_the_download_commands(caches):
    hf_cache, ms_cache = caches
    with pytest.raises(ModelError) as error:
        hub.resolve(V3_ID)
    assert error.value.exit_code == 3
    assert str(error.value) == (
        f"{V3_ID}: not a local folder, and not in the Hugging Face cache ({hf_cache}) or the ModelScope cache "
        f"({ms_cache}); download it with `voiceclone download {V3_ID}` (or `hf download {V3_ID}`, or "
        f"`modelscope download --model {V3_ID}`)"
    )
    with pytest.raises(ModelError, match=f"`voiceclone download {MS_ID} --source modelscope`"):
        hub.resolve(MS_ID)


def test_download_command_fills_the_hf_cache(caches, small_model: Path, monkeypatch):
    import huggingface_hub

    hf_cache, _ = caches
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_hub_download(small_model, "b" * 40, calls))
    result = invoke("download", V2_ID)
    snapshot = hf_cache / "models--FunAudioLLM--CosyVoice2-0.5B" / "snapshots" / ("b" * 40)
    assert result.exit_code == 0, result.output
    assert lines(result) == [f"downloaded {V2_ID} from hf (revision {'b' * 40}) -> {snapshot}"]
    assert calls == [(V2_ID, hf_cache)]
    assert hub.resolve(V2_ID) == hub.HubModel(snapshot, V2_ID, "hf", "b" * 40)


def test_download_failures_are_one_line(caches, monkeypatch):
    import huggingface_hub

    def offline(repo_id, **kwargs):
        raise OSError("Network is unreachable\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    failed = invoke("download", V2_ID, "--source", "hf")
    assert failed.exit_code == 3
    assert lines(failed) == [f"error: {V2_ID}: download from Hugging Face failed: Network is unreachable"]
    monkeypatch.setitem(sys.modules, "modelscope", None)  # not installed
    missing = invoke("download", MS_ID)
    assert missing.exit_code == 3 and len(lines(missing)) == 1 and "`pip install modelscope`" in missing.output
    assert invoke("download", "not-an-id").exit_code == 2
    assert invoke("download", V2_ID, "--source", "github").exit_code == 2


def test_inspect_and_synth_take_a_hub_id(caches, v3_model_dir: Path, tmp_path: Path):
    """The tiny CosyVoice3 fixture in a fake HF cache, used by id end to end (config read, then a dry run)."""
    snapshot = write_hf_snapshot(caches[0], V3_ID, v3_model_dir, "c" * 40)
    inspected = invoke("inspect", V3_ID)
    assert inspected.exit_code == 0, inspected.output
    info = json.loads(inspected.output)
    assert info["path"] == str(snapshot) and info["family"] == "cosyvoice3" and info["problems"] == []
    assert info["hub"] == {"repo_id": V3_ID, "source": "hf", "revision": "c" * 40}
    by_path = json.loads(invoke("inspect", v3_model_dir).output)
    assert info["model_id"] == by_path["model_id"] and by_path["hub"] is None
    manifest = EXAMPLES / "manifest.csv"
    dry = invoke("synth", manifest, "--model", V3_ID, "--out", tmp_path / "out", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"model {V3_ID}; device cpu" in dry.output and not (tmp_path / "out").exists()
    missing = invoke("synth", manifest, "--model", V2_ID, "--out", tmp_path / "out", "--dry-run")
    assert missing.exit_code == 3 and lines(missing) == [f"error: {hub.not_cached_error(V2_ID)}"]
    later = invoke("synth", manifest, "--model", V2_ID, "--out", tmp_path / "out", "--dry-run", "--allow-download")
    assert later.exit_code == 0 and f"model {V2_ID} (in no local cache: the run downloads it)" in later.output


def test_synth_allow_download_fetches_then_runs(caches, v3_model_dir: Path, tmp_path: Path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_hub_download(v3_model_dir, "d" * 40))
    manifest = tmp_path / "one.csv"
    manifest.write_text(
        "id,prompt_audio,prompt_text,target_text\n"
        f"yes,{EXAMPLES / 'prompts' / 'stella_16k.wav'},Please call Stella.,Yes.\n"
    )
    out = tmp_path / "out"
    refused = invoke("synth", manifest, "--model", V3_ID, "--out", out)
    assert refused.exit_code == 3 and "voiceclone download" in refused.output and not out.exists()
    run = invoke("synth", manifest, "--model", V3_ID, "--out", out, "--allow-download", "--quiet")
    assert run.exit_code == 0, run.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 1 and summary["model"] == V3_ID
    assert summary["hub"] == {"repo_id": V3_ID, "source": "hf", "revision": "d" * 40}
