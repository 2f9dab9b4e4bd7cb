"""`convert` (an official folder to our safetensors layout) and `inspect` (what a model folder holds).

torch is imported only to convert and to read an official folder's `.pt` weights; inspecting a converted folder reads
its JSON and the safetensors headers alone."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voiceclone.errors import ModelError, UsageError
from voiceclone.files import build_folder
from voiceclone.loading import hub, layout

if TYPE_CHECKING:
    import torch

SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64"}
SAFETENSORS_DTYPES |= {"I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _copy_resources(src: Path, dst: Path, family: str) -> None:
    (dst / layout.BLANK_EN).mkdir()
    for name in (*layout.TOKENIZER_FILES, *layout.OPTIONAL_TOKENIZER_FILES):
        if (src / layout.BLANK_EN / name).is_file():
            shutil.copyfile(src / layout.BLANK_EN / name, dst / layout.BLANK_EN / name)
    for name in layout.onnx_files(family):
        shutil.copyfile(src / name, dst / name)


def convert(src: str | Path, dst: str | Path, llm_file: str = "llm.pt", overwrite: bool = False) -> Path:
    """Write `dst`: the networks as safetensors (weight norm folded, no lm_head), `voiceclone.json`, tokenizer, ONNX."""
    import torch
    from safetensors.torch import save_file

    from voiceclone.loading.load import load_networks, read_states

    src_dir, dst = layout.existing_dir(src), Path(dst).expanduser()
    if layout.is_converted(src_dir):
        raise ModelError(f"{src_dir}: already a converted directory")
    if dst.exists() and not overwrite:
        raise UsageError(f"{dst}: already exists; pass --overwrite to replace it, or choose another folder")
    _check_destination(dst)
    config, states, model_id = read_states(src_dir, llm_file)
    networks = load_networks(config, states, official=True)
    del states
    info = {
        "format": "voiceclone",
        "format_version": layout.FORMAT_VERSION,
        "model_id": model_id,
        "config": config.to_json(),
        "source": {"path": str(src_dir.resolve()), "llm_file": llm_file, "torch": torch.__version__},
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

    def fill(tmp: Path) -> None:
        for name, module in networks.items():
            state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
            save_file(state, tmp / f"{name}.safetensors", metadata={"format": "pt", "voiceclone_model_id": model_id})
        _copy_resources(src_dir, tmp, config.family)
        (tmp / layout.CONVERTED_CONFIG).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")

    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        build_folder(dst, fill, replace=overwrite)
    except OSError as e:
        raise UsageError(f"{dst}: cannot write the converted model ({e.strerror or e})") from None
    return dst


def _check_destination(dst: Path) -> None:
    """UsageError, before any weight is read, when the nearest existing folder above `dst` is not a folder."""
    for parent in dst.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UsageError(f"{dst}: cannot create it: {parent} is not a folder")
            return


def _tensor_summary(state: dict[str, torch.Tensor]) -> dict:
    """Tensor count, stored elements (parameters and buffers, tied tensors once) and dtypes of one state dict."""
    seen: set[tuple[int, int]] = set()
    elements, dtypes = 0, {}
    for tensor in state.values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key not in seen:
            seen.add(key)
            elements += tensor.numel()
        name = str(tensor.dtype).removeprefix("torch.")
        dtypes[name] = dtypes.get(name, 0) + 1
    return {"tensors": len(state), "parameters": elements, "dtypes": dtypes}


def _safetensors_summary(path: Path) -> dict:
    """`_tensor_summary` of a safetensors file from its header alone (it stores no tensor twice)."""
    from safetensors import safe_open

    elements, dtypes = 0, {}
    with safe_open(path, "numpy") as f:
        names = list(f.keys())
        for name in names:
            tensor = f.get_slice(name)
            elements += math.prod(tensor.get_shape())
            dtype = SAFETENSORS_DTYPES.get(tensor.get_dtype(), tensor.get_dtype())
            dtypes[dtype] = dtypes.get(dtype, 0) + 1
    return {"tensors": len(names), "parameters": elements, "dtypes": dtypes}


def _file_sizes(model_dir: Path) -> dict[str, int]:
    return {
        str(p.relative_to(model_dir)): p.stat().st_size
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def inspect(path: str | Path, llm_file: str = "llm.pt") -> dict:
    """What a model directory holds: family, format, dimensions, per-network parameters and dtypes, files, problems
    (anything that keeps it from loading) and notes; `hub` names the id, hub and revision a hub id resolved to. A
    folder that is no model of a known family raises ModelError."""
    found = hub.resolve(path)
    model_dir = layout.existing_dir(found.path if found else path)
    family = layout.family_of(model_dir)
    converted = layout.is_converted(model_dir)
    report: dict[str, Any] = {
        "path": str(model_dir),
        "format": "converted" if converted else "official",
        "family": family,
        "model_id": None,
        "hub": found.describe() if found else None,
        "config": None,
        "networks": {},
        "files": _file_sizes(model_dir),
        "problems": [],
        "notes": [],
    }
    problems = report["problems"]
    names = layout.model_files(model_dir, llm_file)
    problems += [f"{name}: missing" for name in names if not (model_dir / name).is_file()]
    for name, file in layout.network_files(converted, llm_file).items():
        weights = model_dir / file
        problem = layout.weight_file_problem(weights) if weights.is_file() else None
        if problem:
            problems.append(problem)
        elif weights.is_file():
            try:
                summary = _safetensors_summary(weights) if converted else _tensor_summary(layout.load_pt(weights))
            except ModelError as exc:
                problems.append(str(exc))
                continue
            report["networks"][name] = {"file": file, **summary}
    if not problems:
        try:
            report["config"] = _config_json(model_dir, converted, llm_file)
            report["model_id"] = layout.model_id_of(model_dir, llm_file)
        except ModelError as exc:
            problems.append(str(exc))
    if not converted and not (model_dir / layout.BLANK_EN / "model.safetensors").is_file():
        report["notes"].append(f"{layout.BLANK_EN}/model.safetensors absent: only the reference's loader needs it")
    if not converted and llm_file == "llm.pt" and (model_dir / "llm.rl.pt").is_file():
        report["notes"].append("llm.rl.pt present: load it with --llm-file llm.rl.pt")
    return report


def _config_json(model_dir: Path, converted: bool, llm_file: str) -> dict:
    """The model's config as JSON: a converted folder's as stored, an official folder's mapped from its recipe."""
    if converted:
        return layout.read_converted_json(model_dir / layout.CONVERTED_CONFIG)["config"]
    from voiceclone.loading.config import read_config

    return read_config(model_dir, llm_file).to_json()
