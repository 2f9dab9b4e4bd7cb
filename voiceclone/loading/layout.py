"""Model folders on disk: the files of the official release layout and of our converted layout, the model family,
weight files and JSON read with one-line errors, and the model id `--resume` compares.

torch is imported only where a `.pt` file is read, so that checking a folder's files and its model id stays light."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from voiceclone.errors import ModelError
from voiceclone.files import first_line
from voiceclone.loading import hub
from voiceclone.loading.families import FAMILIES, family

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
CONVERTED_CONFIG = "voiceclone.json"
BLANK_EN = "CosyVoice-BlankEN"
TOKENIZER_FILES = ("config.json", "tokenizer_config.json", "vocab.json", "merges.txt")
OPTIONAL_TOKENIZER_FILES = ("generation_config.json",)
CAMPPLUS = "campplus.onnx"
NETWORKS = ("llm", "flow", "hift")


def family_of(model_dir: Path) -> str:
    """The model family named by the directory's yaml (or converted config), the newest first when several are
    there; CosyVoice1 and folders of no family raise ModelError."""
    converted = model_dir / CONVERTED_CONFIG
    if converted.is_file():
        return family(read_converted_json(converted)["config"].get("family")).name
    for known in FAMILIES.values():
        if (model_dir / known.yaml).is_file():
            return known.name
    if (model_dir / "cosyvoice.yaml").is_file():
        raise ModelError(f"{model_dir / 'cosyvoice.yaml'}: CosyVoice1 model directories are not supported")
    titles, yamls = " or ".join(f.title for f in FAMILIES.values()), ", ".join(f.yaml for f in FAMILIES.values())
    raise ModelError(f"{model_dir}: not a {titles} model directory (no {yamls} or {CONVERTED_CONFIG})")


def onnx_files(family_name: str) -> tuple[str, str]:
    """The front end's ONNX files of a family: CAM++ and its speech tokenizer."""
    return (CAMPPLUS, family(family_name).speech_tokenizer)


def read_json(path: Path) -> dict:
    """A JSON object from `path`; a missing or invalid file raises ModelError naming it."""
    if not path.is_file():
        raise ModelError(f"{path}: missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: invalid JSON ({exc})") from None
    except RecursionError:
        raise ModelError(f"{path}: invalid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def strip_file_prefix(exc: Exception) -> str:
    """The message of an error raised by a network or config loader, without its own short file-name prefix."""
    return re.sub(r"^[\w.-]+\.(pt|json): ", "", first_line(exc))


def load_pt(path: Path) -> dict[str, torch.Tensor]:
    """A `.pt` state dict, memory-mapped; anything but a readable dict of tensors raises ModelError naming the file."""
    import torch

    if not path.is_file():
        raise ModelError(f"{path}: missing")
    try:  # files from torch.save are zip archives and can be memory-mapped; legacy pickles cannot
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # torch raises many kinds of error for a truncated or garbled archive
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors")
    return state


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A `.safetensors` file on the CPU; a missing or garbled file raises ModelError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelError(f"{path}: missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({first_line(exc)})") from None


def read_converted_json(path: Path) -> dict:
    """`voiceclone.json` of a converted folder, checked to be this format version."""
    data = read_json(path)
    if data.get("format") != "voiceclone" or data.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{path}: format {data.get('format')!r} version {data.get('format_version')!r} is not "
            f"voiceclone version {FORMAT_VERSION}; convert the model again"
        )
    if not isinstance(data.get("config"), dict) or not isinstance(data["config"].get("family"), str):
        raise ModelError(f"{path}: missing `config` (an object naming the model `family`)")
    return data


def existing_dir(path: str | Path) -> Path:
    """The folder `path` names (a hub id: its cached folder), checked to exist, or ModelError."""
    model_dir = hub.model_dir(path)
    if not model_dir.exists():
        raise ModelError(f"{model_dir}: model directory does not exist")
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: not a directory")
    return model_dir


def is_converted(model_dir: Path) -> bool:
    """Whether `model_dir` holds our converted layout (else the official one)."""
    return (model_dir / CONVERTED_CONFIG).is_file()


def _content_id(model_dir: Path, names: list[str], sample: int = 1 << 16) -> str:
    """A stable id from each file's name, size and three sampled 64 KiB blocks (start, middle, end).

    Copies and touched files keep their id; changed weights change it (without reading gigabytes)."""
    digest = hashlib.sha256()
    for name in names:
        path = model_dir / name
        size = path.stat().st_size
        digest.update(f"{name}\0{size}\n".encode())
        with path.open("rb") as f:
            for offset in sorted({0, max(0, size // 2 - sample // 2), max(0, size - sample)}):
                f.seek(offset)
                digest.update(f.read(sample))
    return digest.hexdigest()[:16]


def weight_file_problem(path: Path) -> str | None:
    """Why a weight file cannot be whole, from its container alone (no tensor is read), or None.

    A `.pt` that starts as a zip archive (what torch.save writes) must end with the archive's directory, which a cut
    file lacks; a `.safetensors` file's header must describe exactly the bytes the file holds."""
    from safetensors import SafetensorError, safe_open

    try:
        if path.suffix == ".safetensors":
            with safe_open(path, "numpy"):
                return None
        with path.open("rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        if zipped:
            zipfile.ZipFile(path).close()
    except (SafetensorError, zipfile.BadZipFile, OSError) as exc:
        return f"{path.name}: not a complete {path.suffix.lstrip('.')} file ({first_line(exc)})"
    return None


def network_files(converted: bool, llm_file: str) -> dict[str, str]:
    """The weight file of each network, by network name."""
    if converted:
        return {name: f"{name}.safetensors" for name in NETWORKS}
    return {"llm": llm_file, "flow": "flow.pt", "hift": "hift.pt"}


def model_id_of(model_dir: Path, llm_file: str = "llm.pt") -> str:
    """The id `--resume` compares: the source's id for a converted directory, else one from the weight files' stats."""
    if is_converted(model_dir):
        data = read_converted_json(model_dir / CONVERTED_CONFIG)
        if data.get("model_id"):
            return str(data["model_id"])
        names = converted_files(family_of(model_dir))
        check_files(model_dir, names)
        return _content_id(model_dir, names)
    name = family_of(model_dir)
    check_files(model_dir, official_files(llm_file, name))
    return f"{name}-{_content_id(model_dir, official_files(llm_file, name))}"


def official_files(llm_file: str, family_name: str = "cosyvoice3") -> list[str]:
    """Every file an official folder of the family must hold."""
    return [
        family(family_name).yaml,
        llm_file,
        "flow.pt",
        "hift.pt",
        *onnx_files(family_name),
        *(f"{BLANK_EN}/{n}" for n in TOKENIZER_FILES),
    ]


def converted_files(family_name: str = "cosyvoice3") -> list[str]:
    """Every file a converted folder of the family must hold."""
    blank = [f"{BLANK_EN}/{n}" for n in TOKENIZER_FILES]
    return [CONVERTED_CONFIG, *(f"{n}.safetensors" for n in NETWORKS), *onnx_files(family_name), *blank]


def model_files(model_dir: Path, llm_file: str) -> list[str]:
    """Every file the folder must hold, by its format and family (ModelError for a folder of no family)."""
    name = family_of(model_dir)
    return converted_files(name) if is_converted(model_dir) else official_files(llm_file, name)


def check_files(model_dir: Path, names: list[str]) -> None:
    """ModelError naming the first of `names` missing from `model_dir`."""
    for name in names:
        if not (model_dir / name).is_file():
            raise ModelError(f"{model_dir / name}: missing")
