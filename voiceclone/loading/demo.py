"""Random-weight CosyVoice3 and CosyVoice2 directories in the official release layout (the demo models and benchmark
models)."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from voiceclone.errors import UsageError
from voiceclone.files import build_folder
from voiceclone.frontend.features import MelConfig
from voiceclone.loading.config import ModelConfig, build_networks
from voiceclone.loading.families import COSYVOICE2, COSYVOICE3, FAMILIES
from voiceclone.loading.layout import BLANK_EN, CAMPPLUS
from voiceclone.loading.recipes import yaml_text
from voiceclone.loading.standins import write_blank_en, write_campplus_onnx, write_speech_tokenizer_onnx
from voiceclone.models.conformer import ConformerConfig
from voiceclone.models.dit import DiTConfig
from voiceclone.models.flow import FlowConfig
from voiceclone.models.flow2 import Flow2Config
from voiceclone.models.hift import HiFTConfig
from voiceclone.models.lm import LMConfig
from voiceclone.models.qwen2 import Qwen2Config
from voiceclone.models.unet import UNetConfig

DEMO_FORMAT = 2  # bump whenever the demo files change, so cached copies are rebuilt
DEMO_SEED = 20251

# ---------------------------------------------------------------------------------------------------------------------
# Configurations.


def model_config(size: str, family: str = "cosyvoice3") -> ModelConfig:
    """The dimensions of a demo model: "tiny" (like the family's parity fixture) or "full" (the released
    Fun-CosyVoice3-0.5B or CosyVoice2-0.5B)."""
    if family not in FAMILIES:
        raise UsageError(f"--family: unknown family {family!r} (choose {' or '.join(FAMILIES)})")
    if size not in ("tiny", "full"):
        raise UsageError(f"--size: unknown size {size!r} (choose tiny or full)")
    v2 = family == COSYVOICE2.name
    full = ModelConfig(
        family=family,
        sample_rate=24000,
        token_frame_rate=25,
        token_mel_ratio=2,
        lm=LMConfig(qwen=Qwen2Config(), extra_tokens=3, decoder_bias=True, sos_task_embedding=True)
        if v2
        else LMConfig(qwen=Qwen2Config()),
        flow=Flow2Config() if v2 else FlowConfig(dit=DiTConfig()),
        hift=HiFTConfig(),
        mel=MelConfig(fmax=8000.0) if v2 else MelConfig(),
    )
    if size == "full":
        return full
    tiny_hift = replace(full.hift, base_channels=32, f0_cond_channels=32)
    if v2:  # the dimensions of ../shared/parity/cosyvoice2-tiny
        qwen = Qwen2Config(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=40
        )
        flow = replace(
            full.flow,
            encoder=ConformerConfig(linear_units=32, num_blocks=1),
            estimator=UNetConfig(channels=64, attention_head_dim=16, n_blocks=1, num_mid_blocks=2, num_heads=2),
        )
        return replace(full, lm=replace(full.lm, qwen=qwen), flow=flow, hift=tiny_hift)
    qwen = Qwen2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=48
    )
    return replace(
        full,
        lm=replace(full.lm, qwen=qwen),
        flow=replace(full.flow, pre_lookahead_channels=64, dit=DiTConfig(dim=64, depth=2, heads=4, dim_head=16)),
        hift=tiny_hift,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Random networks and the directory.


@torch.no_grad()
def randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Redraw every parameter from `generator`, keeping activations at the scale of PyTorch's default init.

    Embedding tables ~ N(0, 1); other matrices / conv kernels ~ N(0, 1/(3 fan_in)) (the default init's variance);
    constant non-zero vectors (norm gains, Snake alphas) c*(1 + 0.1 N(0,1)); other vectors (biases) 0.02 N(0,1).
    Buffers (rotary frequencies, noise tables) are left as built."""
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    for param in module.parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        value = param.detach().float()
        if id(param) in embeddings:
            new = noise
        elif param.dim() >= 2:
            new = noise / math.sqrt(3 * param[0].numel())
        elif value.numel() > 0 and bool(value.min() == value.max()) and value[0] != 0:
            new = value * (1 + 0.1 * noise)
        else:
            new = 0.02 * noise
        param.copy_(new.to(param.dtype))


def _random_networks(config: ModelConfig, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Official state dicts of the three networks after a seeded random draw (one generator per network)."""
    states = {}
    for index, (name, module) in enumerate(build_networks(config).items()):
        randomize_(module, torch.Generator().manual_seed(seed * 1000 + index))
        states[name] = module.official_state_dict()
    return states


def build_model_dir(out: str | Path, family: str = "cosyvoice3", size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight model directory of `family` in the official release layout into `out` (a new or empty
    folder)."""
    config = model_config(size, family)
    files = FAMILIES[family]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / files.yaml).write_text(yaml_text(config, DEMO_FORMAT), encoding="utf-8")
    write_blank_en(out / BLANK_EN, config.lm.qwen)
    write_campplus_onnx(out / CAMPPLUS, seed + 1)
    write_speech_tokenizer_onnx(out / files.speech_tokenizer, seed + 2)
    for name, state in _random_networks(config, seed).items():
        torch.save(state, out / f"{name}.pt")
    return out


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "voiceclone"


def demo_model_dir(family: str = COSYVOICE3.name) -> Path:
    """The family's tiny demo model in the user cache, built once (atomically, safe against concurrent builders)."""
    files = FAMILIES[family]
    target = _cache_root() / f"{files.demo}-{DEMO_FORMAT}"
    if (target / files.yaml).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        build_folder(target, lambda tmp: build_model_dir(tmp, family=family, size="tiny", seed=DEMO_SEED))
    except OSError:
        if not (target / files.yaml).is_file():  # another builder won the race only if its result is there
            raise
    return target
