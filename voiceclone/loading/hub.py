"""`--model ORG/NAME`: find a hub model in the local Hugging Face or ModelScope cache, or download it on request.

An id is `org/name` that is not an existing path (a local path always wins; `demo` is never an id). Lookups are
offline: the Hugging Face cache through `huggingface_hub.snapshot_download(local_files_only=True)`, the ModelScope
cache as the plain folders the modelscope library writes (`<cache>/models/<org>/<name>`, the name's dots written
`___`; older versions `<cache>/<org>/<name>`), so the modelscope package is needed only to download.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from voiceclone.errors import ModelError, UsageError
from voiceclone.files import first_line

HF, MODELSCOPE = "hf", "modelscope"
SOURCES = (HF, MODELSCOPE)
MODELSCOPE_ORGS = frozenset({"iic"})  # organisations that publish on ModelScope (their models are not on the HF hub)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class HubModel:
    """A hub model on this machine: its folder, id, which cache holds it, and the revision that cache records."""

    path: Path
    repo_id: str
    source: str  # HF or MODELSCOPE
    revision: str | None  # HF: the snapshot's commit hash; ModelScope: the `.mv` file's revision, if any

    def describe(self) -> dict[str, str | None]:
        """The id, hub and revision, as `inspect` and `summary.json` show them (`hub`)."""
        return {"repo_id": self.repo_id, "source": self.source, "revision": self.revision}


def is_hub_id(model: str | Path) -> bool:
    """Whether `model` is `org/name` and not an existing file or folder (relative to the working directory)."""
    text = str(model)
    return bool(_ID.fullmatch(text)) and ".." not in text and not os.path.lexists(Path(text).expanduser())


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default.

    Read from the environment on each call: huggingface_hub reads it once, when first imported."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def modelscope_cache_dir() -> Path:
    """The ModelScope cache: MODELSCOPE_CACHE, else ~/.cache/modelscope/hub (the modelscope library's default)."""
    if os.environ.get("MODELSCOPE_CACHE"):
        return Path(os.environ["MODELSCOPE_CACHE"]).expanduser()
    return Path.home() / ".cache" / "modelscope" / "hub"


def find_in_hf_cache(repo_id: str) -> HubModel | None:
    """The cached snapshot `refs/main` points at, or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, cache_dir=hf_cache_dir(), local_files_only=True))
    except (LocalEntryNotFoundError, ValueError):  # ValueError: an id the HF hub does not accept
        return None
    return HubModel(path, repo_id, HF, path.name)


def _modelscope_folders(repo_id: str) -> list[Path]:
    org, name = repo_id.split("/")
    root = modelscope_cache_dir()
    names = dict.fromkeys((name.replace(".", "___"), name))  # the folder first, then the link newer versions add
    return [base / org / folder for base in (root / "models", root, root / "hub") for folder in names]


def _modelscope_revision(folder: Path) -> str | None:
    """The `Revision:` field of the `.mv` text file modelscope writes after a download."""
    try:
        text = (folder / ".mv").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for part in text.split(","):
        key, _, value = part.partition(":")
        if key.strip() == "Revision" and value.strip():
            return value.strip()
    return None


def find_in_modelscope_cache(repo_id: str) -> HubModel | None:
    """The first cache folder of `repo_id` that holds any file, or None."""
    for folder in _modelscope_folders(repo_id):
        if folder.is_dir() and any(not entry.name.startswith(".") for entry in folder.iterdir()):
            return HubModel(folder, repo_id, MODELSCOPE, _modelscope_revision(folder))
    return None


def find_cached(repo_id: str) -> HubModel | None:
    """`repo_id` from the Hugging Face cache, else from the ModelScope cache, else None."""
    return find_in_hf_cache(repo_id) or find_in_modelscope_cache(repo_id)


def default_source(repo_id: str) -> str:
    """Where `voiceclone download` fetches `repo_id` from when --source is not given."""
    return MODELSCOPE if repo_id.split("/")[0] in MODELSCOPE_ORGS else HF


def not_cached_error(repo_id: str) -> ModelError:
    """One line: where we looked, and the exact commands that download the model."""
    source = "" if default_source(repo_id) == HF else f" --source {MODELSCOPE}"
    return ModelError(
        f"{repo_id}: not a local folder, and not in the Hugging Face cache ({hf_cache_dir()}) or the ModelScope "
        f"cache ({modelscope_cache_dir()}); download it with `voiceclone download {repo_id}{source}` "
        f"(or `hf download {repo_id}`, or `modelscope download --model {repo_id}`)"
    )


def _download_hf(repo_id: str) -> HubModel:
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, cache_dir=hf_cache_dir()))
    except Exception as exc:  # HTTP, connection, offline-mode and validation errors all mean: no download
        raise ModelError(f"{repo_id}: download from Hugging Face failed: {first_line(exc)}") from None
    return HubModel(path, repo_id, HF, path.name)


def _download_modelscope(repo_id: str) -> HubModel:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise ModelError(
            f"{repo_id}: downloading from ModelScope needs the modelscope package: `pip install modelscope` "
            f"(or `voiceclone download ID --source hf` with the model's Hugging Face id)"
        ) from None
    try:
        path = Path(snapshot_download(repo_id))
    except Exception as exc:  # the modelscope library raises HTTP, connection and validation errors alike
        raise ModelError(f"{repo_id}: download from ModelScope failed: {first_line(exc)}") from None
    return find_in_modelscope_cache(repo_id) or HubModel(path, repo_id, MODELSCOPE, _modelscope_revision(path))


def download(repo_id: str, source: str | None = None) -> HubModel:
    """Download (or update) `repo_id` into its hub's cache with the hub's own library."""
    if not _ID.fullmatch(repo_id) or ".." in repo_id:
        raise UsageError(f"{repo_id!r}: not a hub id (expected ORG/NAME, e.g. FunAudioLLM/Fun-CosyVoice3-0.5B-2512)")
    source = source or default_source(repo_id)
    if source not in SOURCES:
        raise UsageError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    return _download_hf(repo_id) if source == HF else _download_modelscope(repo_id)


def resolve(model: str | Path, allow_download: bool = False) -> HubModel | None:
    """The hub model `model` names, from a cache (or downloaded, when allowed); None when `model` is not a hub id.

    Raises ModelError with the download commands when the id is in no cache and downloading is not allowed."""
    if not is_hub_id(model):
        return None
    repo_id = str(model)
    found = find_cached(repo_id)
    if found is not None:
        return found
    if allow_download:
        return download(repo_id)
    raise not_cached_error(repo_id)


def model_dir(model: str | Path) -> Path:
    """The folder `model` names: a hub id's cached folder, or `model` itself as a path."""
    found = resolve(model)
    return found.path if found is not None else Path(model).expanduser()
