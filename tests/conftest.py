"""Shared test fixtures: where the parity fixtures live; the CosyVoice2 networks, loaded once per session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from voiceclone.frontend.features import MelConfig
from voiceclone.loading.config import ModelConfig, read_config
from voiceclone.loading.hyperpyyaml import read_hyperpyyaml
from voiceclone.models.conformer import ConformerConfig
from voiceclone.models.flow2 import Flow2, Flow2Config
from voiceclone.models.hift import HiFTConfig
from voiceclone.models.hift2 import HiFT2
from voiceclone.models.lm import CosyVoice3LM, LMConfig
from voiceclone.models.qwen2 import Qwen2Config
from voiceclone.models.unet import UNetConfig

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO.parent / "shared" / "parity"
V3 = PARITY / "cosyvoice3-tiny"
V2 = PARITY / "cosyvoice2-tiny"


@pytest.fixture(scope="session")
def v3_model_dir() -> Path:
    """The random-weight CosyVoice3 directory in the official layout (read-only)."""
    assert (V3 / "model" / "cosyvoice3.yaml").is_file(), f"parity fixtures missing at {V3}"
    return V3 / "model"


@pytest.fixture(scope="session")
def v3_cases() -> Path:
    """The reference outputs for the CosyVoice3 tiny model."""
    return V3 / "cases"


@pytest.fixture(scope="session")
def v3_config(v3_model_dir: Path) -> ModelConfig:
    """The tiny model's configuration, read by the real loader (every dimension from its files)."""
    return read_config(v3_model_dir)


# ---------------------------------------------------------------------------------------------------------------------
# CosyVoice2: configs read straight from the yaml, apart from the loader (test_family_v2 checks both agree).


@dataclass
class V2Configs:
    lm: LMConfig
    flow: Flow2Config
    hift: HiFTConfig
    mel: MelConfig


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def read_v2_configs(model_dir: Path) -> V2Configs:
    """The three network configs of a CosyVoice2 directory: `cosyvoice2.yaml`, BlankEN's config.json, llm.pt rows."""
    top = read_hyperpyyaml((model_dir / "cosyvoice2.yaml").read_text(encoding="utf-8"))
    qwen = Qwen2Config.from_hf(json.loads((model_dir / "CosyVoice-BlankEN" / "config.json").read_text()))
    llm = top["llm"].kwargs
    rows = torch.load(model_dir / "llm.pt", weights_only=True, mmap=True)["speech_embedding.weight"].shape[0]
    sampling = {k: llm["sampling"].kwargs[k] for k in ("top_p", "top_k", "win_size", "tau_r")}
    lm = LMConfig(
        qwen=qwen,
        speech_token_size=llm["speech_token_size"],
        extra_tokens=rows - llm["speech_token_size"],
        decoder_bias=True,
        sos_task_embedding=True,
        **sampling,
    )
    flow = top["flow"].kwargs
    encoder = flow["encoder"].kwargs
    decoder = flow["decoder"].kwargs
    estimator = decoder["estimator"].kwargs
    (channels,) = estimator["channels"]
    flow_config = Flow2Config(
        **{k: flow[k] for k in ("vocab_size", "input_size", "output_size", "spk_embed_dim", "token_mel_ratio")},
        pre_lookahead_len=flow["pre_lookahead_len"],
        inference_cfg_rate=decoder["cfm_params"].kwargs["content"]["inference_cfg_rate"],
        t_scheduler=decoder["cfm_params"].kwargs["content"]["t_scheduler"],
        encoder=ConformerConfig(
            **{k: encoder[k] for k in ("input_size", "output_size", "attention_heads", "linear_units", "num_blocks")},
            static_chunk_size=encoder["static_chunk_size"],
        ),
        estimator=UNetConfig(
            channels=channels,
            **{
                k: estimator[k]
                for k in (
                    "in_channels",
                    "out_channels",
                    "attention_head_dim",
                    "n_blocks",
                    "num_mid_blocks",
                    "num_heads",
                    "static_chunk_size",
                )
            },
        ),
    )
    hift = top["hift"].kwargs
    f0 = hift["f0_predictor"].kwargs
    hift_config = HiFTConfig(
        **{k: _tuples(v) for k, v in hift.items() if k in HiFTConfig.__dataclass_fields__},
        istft_n_fft=hift["istft_params"]["n_fft"],
        istft_hop_len=hift["istft_params"]["hop_len"],
        f0_num_class=f0["num_class"],
        f0_in_channels=f0["in_channels"],
        f0_cond_channels=f0["cond_channels"],
    )
    mel = MelConfig(**{k: v for k, v in top["feat_extractor"].kwargs.items() if k in MelConfig.__dataclass_fields__})
    return V2Configs(lm=lm, flow=flow_config, hift=hift_config, mel=mel)


@pytest.fixture(scope="session")
def v2_model_dir() -> Path:
    """The random-weight CosyVoice2 directory in the official layout (read-only)."""
    assert (V2 / "model" / "cosyvoice2.yaml").is_file(), f"parity fixtures missing at {V2}"
    return V2 / "model"


@pytest.fixture(scope="session")
def v2_cases() -> Path:
    """The reference outputs for the CosyVoice2 tiny model."""
    return V2 / "cases"


@pytest.fixture(scope="session")
def v2_configs(v2_model_dir: Path) -> V2Configs:
    return read_v2_configs(v2_model_dir)


@pytest.fixture(scope="session")
def v2_released_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """Key -> shape of the released CosyVoice2-0.5B llm.pt / flow.pt / hift.pt (hift in the parametrizations form)."""
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for line in (PARITY.parent / "reference" / "cosyvoice_keys_v2.tsv").read_text().splitlines():
        file, key, shape = (line.split("\t") + ["", "", ""])[:3]
        if file.endswith(".pt"):
            shapes.setdefault(file, {})[key] = tuple(json.loads(shape))
    return shapes


@pytest.fixture(scope="session")
def v2_lm(v2_configs: V2Configs, v2_model_dir: Path) -> CosyVoice3LM:
    model = CosyVoice3LM(v2_configs.lm).eval()
    model.load_official_state_dict(torch.load(v2_model_dir / "llm.pt", weights_only=True, mmap=True))
    return model


@pytest.fixture(scope="session")
def v2_flow(v2_configs: V2Configs, v2_model_dir: Path) -> Flow2:
    """The CosyVoice2 flow (flow.pt is ~58 MB: loaded once per session)."""
    model = Flow2(v2_configs.flow).eval()
    model.load_official_state_dict(torch.load(v2_model_dir / "flow.pt", weights_only=True, mmap=True))
    return model


@pytest.fixture(scope="session")
def v2_hift(v2_configs: V2Configs, v2_model_dir: Path) -> HiFT2:
    model = HiFT2(v2_configs.hift)
    model.load_official_state_dict(torch.load(v2_model_dir / "hift.pt", weights_only=True, mmap=True))
    return model.eval()
