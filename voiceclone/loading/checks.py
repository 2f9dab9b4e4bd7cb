"""Model config values checked before anything is built: each field's kind (from its dataclass annotation) and a sane
range, so a wrong or huge value in a model yaml, `config.json` or `voiceclone.json` is one ModelError naming the file
and the key, never a TypeError deep in a network or a gigabyte allocation."""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any

from voiceclone.errors import ModelError

MAX_INT = 1 << 16  # layers, heads, channels, kernel sizes, ratios: the released model's largest is 4864
LARGE_INTS = {  # fields whose released values are larger
    "vocab_size": 1 << 22,
    "speech_token_size": 1 << 22,
    "max_position_embeddings": 1 << 22,
    "sampling_rate": 1 << 20,
    "sample_rate": 1 << 20,
    "noise_frames": 1 << 20,
    "noise_samples": 1 << 26,
}
AT_LEAST_ONE = {  # sizes other values are divided by or that a network cannot have zero of
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "speech_token_size",
    "dim",
    "depth",
    "heads",
    "dim_head",
    "sample_rate",
    "sampling_rate",
    "token_frame_rate",
    "token_mel_ratio",
    "n_fft",
    "hop_size",
    "win_size",
    "num_mels",
    "istft_n_fft",
    "istft_hop_len",
}
MAX_FLOAT = 1e12
_SAMPLING = ("top_p", "top_k", "win_size", "tau_r")
_DIT = ("dim", "depth", "heads", "dim_head", "ff_mult", "mel_dim", "mu_dim", "spk_dim", "out_channels")
_MEL = ("n_fft", "num_mels", "sampling_rate", "hop_size", "win_size", "fmin", "fmax", "center")
YAML_PLACES = {  # ModelConfig field path -> where a CosyVoice3 recipe keeps it
    "lm.speech_token_size": "llm.speech_token_size",
    **{f"lm.{key}": f"llm.sampling.{key}" for key in _SAMPLING},
    "flow.pre_lookahead_channels": "flow.pre_lookahead_layer.channels",
    "flow.inference_cfg_rate": "flow.decoder.cfm_params.content.inference_cfg_rate",
    "flow.t_scheduler": "flow.decoder.cfm_params.content.t_scheduler",
    **{f"flow.dit.{key}": f"flow.decoder.estimator.{key}" for key in (*_DIT, "static_chunk_size")},
    "hift.istft_n_fft": "hift.istft_params.n_fft",
    "hift.istft_hop_len": "hift.istft_params.hop_len",
    **{f"hift.f0_{key}": f"hift.f0_predictor.{key}" for key in ("num_class", "in_channels", "cond_channels")},
    **{f"mel.{key}": f"feat_extractor.{key}" for key in _MEL},
}
MAX_ITEMS = 64  # entries of a tuple field (upsample rates, kernel sizes, dilations)


def _kind(value: Any, annotation: str, name: str) -> str | None:
    """What is wrong with `value` for a field annotated `annotation` (a string: `int`, `float | None`,
    `tuple[tuple[int, ...], ...]`, ...), or None when it fits."""
    base, _, optional = annotation.partition(" | ")
    if value is None:
        return None if optional else f"expected {base}"
    if base.startswith("tuple["):
        inner = base[len("tuple[") : -len(", ...]")]
        if not isinstance(value, tuple | list) or len(value) > MAX_ITEMS:
            return f"expected a list of at most {MAX_ITEMS} values ({inner})"
        for item in value:
            problem = _kind(item, inner, name)
            if problem:
                return problem
        return None
    if base == "bool":
        return None if isinstance(value, bool) else "expected true or false"
    if base == "str":
        return None if isinstance(value, str) else "expected a string"
    if base not in ("int", "float"):
        return None  # another kind of field (a nested config is checked field by field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected {'an integer' if base == 'int' else 'a number'}"
    if base == "int":
        low, high = (1 if name in AT_LEAST_ONE else 0), LARGE_INTS.get(name, MAX_INT)
        if not isinstance(value, int) or not low <= value <= high:
            return f"expected an integer in [{low}, {high}]"
        return None
    if not (math.isfinite(value) and abs(value) <= MAX_FLOAT):
        return f"expected a finite number of magnitude at most {MAX_FLOAT:g}"
    return None


def check_value(value: Any, annotation: str, name: str, where: str) -> None:
    """ModelError `{where}: expected ..., got ...` when `value` does not fit the annotation (see `check_config`)."""
    problem = _kind(value, annotation, name)
    if problem:
        raise ModelError(f"{where}: {problem}, got {_show(value)}")


def check_values(cls: type, values: dict, where: str) -> None:
    """Check the entries of `values` (e.g. a `config.json`) that name fields of dataclass `cls`."""
    for f in fields(cls):
        if f.name in values:
            check_value(values[f.name], str(f.type), f.name, f"{where}: {f.name}")


def check_config(config: Any, where: str, places: dict[str, str] | None = None, prefix: str = "") -> None:
    """Check every field of a (nested) config dataclass against its annotation and range; an error names `where`
    and the key, `places` mapping a field path (`flow.dit.dim`) to where the file keeps it (`flow.decoder...dim`)."""
    for f in fields(config):
        path, value = f"{prefix}{f.name}", getattr(config, f.name)
        if is_dataclass(value):
            check_config(value, where, places, f"{path}.")
        else:
            key = (places or {}).get(path, path)
            check_value(value, str(f.type), f.name, f"{where}: {key}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
