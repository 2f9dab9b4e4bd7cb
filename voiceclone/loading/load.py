"""Loading a model folder (official release or converted) into a `LoadedModel`.

The networks are built on the meta device and their weights assigned straight from the files (the gpt-fast way):
nothing is initialised only to be overwritten, and no global RNG is drawn.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from voiceclone.errors import ModelError
from voiceclone.frontend.prompt import PromptCache, PromptFrontend
from voiceclone.frontend.text import Tokenizer
from voiceclone.loading import hub
from voiceclone.loading.config import ModelConfig, build_networks, converted_config, official_config
from voiceclone.loading.families import demo_family
from voiceclone.loading.layout import (
    BLANK_EN,
    CONVERTED_CONFIG,
    check_files,
    existing_dir,
    is_converted,
    load_pt,
    load_safetensors,
    model_files,
    model_id_of,
    network_files,
    strip_file_prefix,
)
from voiceclone.models.flow import Flow
from voiceclone.models.flow2 import Flow2
from voiceclone.models.hift import HiFT
from voiceclone.models.lm import CosyVoice3LM
from voiceclone.models.network import StageDtypes, load_assigned

States = dict[str, tuple[Path, dict[str, torch.Tensor]]]  # network name -> (weight file, its tensors)


@dataclass
class LoadedModel:
    """A ready model: config, text tokenizer, the prompt-feature cache and the three networks on one device, each in
    its dtype (`dtypes`)."""

    config: ModelConfig
    tokenizer: Tokenizer
    prompts: PromptCache
    lm: CosyVoice3LM
    flow: Flow | Flow2
    hift: HiFT  # HiFT2 for CosyVoice2
    device: torch.device
    dtypes: StageDtypes
    model_dir: Path
    model_id: str

    @property
    def dtype(self) -> torch.dtype:
        """The LLM's dtype (`dtypes` has every stage's)."""
        return self.dtypes.llm


def resolve_model(name: str | Path, allow_download: bool = False) -> Path:
    """The folder a `--model` value names: `demo` (`demo-v2`) is the cached CosyVoice3 (CosyVoice2) demo model, built
    on first use; `ORG/NAME` a hub model from a local cache (downloaded when allowed; else ModelError with the download
    command); anything else a path."""
    demo = demo_family(name)
    if demo is not None:
        from voiceclone.loading.demo import demo_model_dir

        return demo_model_dir(demo.name)
    found = hub.resolve(name, allow_download=allow_download)
    return found.path if found is not None else Path(name).expanduser()


def read_states(model_dir: Path, llm_file: str) -> tuple[ModelConfig, States, str]:
    """Config, weight files' tensors (as stored) and model id of an official or converted directory."""
    check_files(model_dir, model_files(model_dir, llm_file))
    if is_converted(model_dir):
        config = converted_config(model_dir / CONVERTED_CONFIG)
        paths = {name: model_dir / file for name, file in network_files(True, llm_file).items()}
        states = {name: (path, load_safetensors(path)) for name, path in paths.items()}
    else:
        paths = {name: model_dir / file for name, file in network_files(False, llm_file).items()}
        states = {name: (path, load_pt(path)) for name, path in paths.items()}
        config = official_config(model_dir, states["llm"][1], paths["llm"])
    return config, states, model_id_of(model_dir, llm_file)


def check_weight_dtypes(path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.dtype]) -> None:
    """Weights stored as integers or booleans cannot be right: ModelError. Floating weights in another precision than
    expected (an official release stores float32; a converted file its network's own dtypes) are cast as the
    reference casts them, with one warning line for the file."""
    wrong = Counter(str(t.dtype).removeprefix("torch.") for t in state.values() if not t.is_floating_point())
    if wrong:
        key = next(k for k, t in state.items() if not t.is_floating_point())
        kinds = ", ".join(f"{n} as {kind}" for kind, n in wrong.items())
        raise ModelError(f"{path}: {kinds} of {len(state)} tensors, where weights are floating point (e.g. {key!r})")
    cast = Counter(
        str(t.dtype).removeprefix("torch.") for k, t in state.items() if t.dtype != expected.get(k, torch.float32)
    )
    if cast:
        kinds = ", ".join(f"{n} as {kind}" for kind, n in cast.items())
        what = "the converted network's dtypes" if expected else "float32, as the release stores them"
        print(f"warning: {path}: {kinds} of {len(state)} tensors, not {what}; cast on load", file=sys.stderr)


def load_networks(config: ModelConfig, states: States, official: bool) -> dict[str, nn.Module]:
    """The networks built on the meta device with every weight assigned from `states` (strictly; errors name the
    file; dtypes checked by `check_weight_dtypes`), in eval mode without gradients, on the CPU."""
    with torch.device("meta"):
        networks = build_networks(config)
    for name, module in networks.items():
        path, state = states[name]
        expected = {} if official else {k: t.dtype for k, t in module.state_dict().items()}
        check_weight_dtypes(path, state, expected)
        try:
            if official:
                module.load_official_state_dict(state)
            else:
                load_assigned(module, state)
        except (ModelError, RuntimeError, KeyError, ValueError) as exc:
            raise ModelError(f"{path}: {strip_file_prefix(exc)}") from None
        module.eval().requires_grad_(False)
    return networks


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | StageDtypes = torch.float32,
    llm_file: str = "llm.pt",
) -> LoadedModel:
    """Load an official CosyVoice3 or CosyVoice2 directory or a converted one (see `resolve_model` for `demo`).

    Each network runs in its `StageDtypes` entry; a single `dtype` is `StageDtypes.of(dtype)` (the LM and flow in it,
    the vocoder in float32). The vocoder's F0 predictor stays float64 and its source float32 whatever its dtype."""
    dtypes = dtype if isinstance(dtype, StageDtypes) else StageDtypes.of(dtype)
    model_dir = existing_dir(path)
    config, states, model_id = read_states(model_dir, llm_file)
    networks = load_networks(config, states, official=not is_converted(model_dir))
    del states
    device = torch.device(device)
    frontend = PromptFrontend.from_model_dir(
        model_dir, config.mel, token_mel_ratio=config.token_mel_ratio, embedding_dim=config.flow.spk_embed_dim
    )
    frontend.check()
    return LoadedModel(
        config=config,
        tokenizer=Tokenizer.from_dir(model_dir / BLANK_EN, config.family),
        prompts=PromptCache(frontend),
        lm=networks["llm"].to(device=device, dtype=dtypes.llm),
        flow=networks["flow"].to(device=device, dtype=dtypes.flow),
        hift=networks["hift"].to(device=device, dtype=dtypes.vocoder),
        device=device,
        dtypes=dtypes,
        model_dir=model_dir,
        model_id=model_id,
    )
