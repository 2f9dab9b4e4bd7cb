"""`convert` (an official folder to our safetensors layout) and `inspect` (what a model folder holds)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from voiceclone.errors import ModelError
from voiceclone.files import build_folder
from voiceclone.loading import layout
from voiceclone.loading.config import read_config
from voiceclone.loading.load import load_networks, read_states


def _copy_resources(src: Path, dst: Path) -> None:
    (dst / layout.BLANK_EN).mkdir()
    for name in (*layout.TOKENIZER_FILES, *layout.OPTIONAL_TOKENIZER_FILES):
        if (src / layout.BLANK_EN / name).is_file():
            shutil.copyfile(src / layout.BLANK_EN / name, dst / layout.BLANK_EN / name)
    for name in layout.ONNX_FILES:
        shutil.copyfile(src / name, dst / name)


def convert(src: str | Path, dst: str | Path, llm_file: str = "llm.pt", overwrite: bool = False) -> Path:
    """Write `dst`: the networks as safetensors (weight norm folded, no lm_head), `voiceclone.json`, tokenizer, ONNX."""
    from safetensors.torch import save_file

    src_dir, dst = layout.existing_dir(src), Path(dst).expanduser()
    if layout.is_converted(src_dir):
        raise ModelError(f"{src_dir}: already a converted directory")
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
        _copy_resources(src_dir, tmp)
        (tmp / layout.CONVERTED_CONFIG).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")

    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and not overwrite:
        raise ModelError(f"{dst}: already exists (choose another output directory)")
    build_folder(dst, fill, replace=overwrite)
    return dst


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


def _file_sizes(model_dir: Path) -> dict[str, int]:
    return {
        str(p.relative_to(model_dir)): p.stat().st_size
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def inspect(path: str | Path, llm_file: str = "llm.pt") -> dict:
    """What a model directory holds: family, format, dimensions, per-network parameters and dtypes, files, problems."""
    model_dir = layout.existing_dir(path)
    converted = layout.is_converted(model_dir)
    report: dict[str, Any] = {
        "path": str(model_dir),
        "format": "converted" if converted else "official",
        "family": None,
        "model_id": None,
        "config": None,
        "networks": {},
        "files": _file_sizes(model_dir),
        "problems": [],
    }
    problems = report["problems"]
    try:
        report["family"] = layout.family_of(model_dir)
        names = layout.converted_files() if converted else layout.official_files(llm_file)
        problems += [f"{name}: missing" for name in names if not (model_dir / name).is_file()]
        config = read_config(model_dir, llm_file)
        report["config"] = config.to_json()
        for name, file in layout.network_files(converted, llm_file).items():
            if (model_dir / file).is_file():
                state = layout.load_safetensors(model_dir / file) if converted else layout.load_pt(model_dir / file)
                report["networks"][name] = {"file": file, **_tensor_summary(state)}
        if not problems:
            report["model_id"] = layout.model_id_of(model_dir, llm_file)
    except ModelError as exc:
        problems.append(str(exc))
    official = report["family"] is not None and not converted
    if official and not (model_dir / layout.BLANK_EN / "model.safetensors").is_file():
        problems.append(f"{layout.BLANK_EN}/model.safetensors: missing (only the reference loader needs it)")
    if official and llm_file == "llm.pt" and (model_dir / "llm.rl.pt").is_file():
        report["notes"] = ["llm.rl.pt present: load it with llm_file='llm.rl.pt'"]
    return report
