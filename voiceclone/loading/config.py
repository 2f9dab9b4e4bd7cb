"""Model configuration: `ModelConfig`, the mapping from a release's HyperPyYAML recipe (and `config.json`, and
llm.pt's shapes) to it, and the networks a config builds.

A family (`loading.families`) is its recipe mapping (`official_config`, which differs only in the flow block) plus its
networks (`build_networks`); the loader, converter and demo builder go through these two for every family.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from voiceclone.errors import ModelError
from voiceclone.files import first_line
from voiceclone.frontend.features import MelConfig
from voiceclone.loading.checks import YAML_PLACES, check_config, check_value, check_values
from voiceclone.loading.families import COSYVOICE2, family
from voiceclone.loading.hyperpyyaml import MAX_YAML_BYTES, YamlCall, read_hyperpyyaml
from voiceclone.loading.layout import (
    BLANK_EN,
    CONVERTED_CONFIG,
    existing_dir,
    family_of,
    is_converted,
    load_pt,
    read_converted_json,
    read_json,
    strip_file_prefix,
)
from voiceclone.models.conformer import ConformerConfig
from voiceclone.models.dit import DiTConfig
from voiceclone.models.flow import Flow, FlowConfig
from voiceclone.models.flow2 import Flow2, Flow2Config
from voiceclone.models.hift import HiFT, HiFTConfig
from voiceclone.models.hift2 import HiFT2
from voiceclone.models.lm import CosyVoice3LM, LMConfig
from voiceclone.models.qwen2 import Qwen2Config
from voiceclone.models.unet import UNetConfig

# Older voiceclone.json files also carry the flow dimensions in `hift` (now read from `flow`): they are skipped.
_HIFT_FIELDS = set(HiFTConfig.__dataclass_fields__)


@dataclass
class ModelConfig:
    """Everything needed to build the three networks and the front end of one model directory."""

    family: str
    sample_rate: int
    token_frame_rate: int
    token_mel_ratio: int
    lm: LMConfig
    flow: FlowConfig | Flow2Config
    hift: HiFTConfig
    mel: MelConfig

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ModelConfig:
        lm, flow = dict(data["lm"]), dict(data["flow"])
        if family(data["family"]) is COSYVOICE2:
            encoder, estimator = ConformerConfig(**flow.pop("encoder")), UNetConfig(**flow.pop("estimator"))
            flow_config = Flow2Config(encoder=encoder, estimator=estimator, **flow)
        else:
            flow_config = FlowConfig(dit=DiTConfig(**flow.pop("dit")), **flow)
        return cls(
            family=data["family"],
            sample_rate=data["sample_rate"],
            token_frame_rate=data["token_frame_rate"],
            token_mel_ratio=data["token_mel_ratio"],
            lm=LMConfig(qwen=Qwen2Config(**lm.pop("qwen")), **lm),
            flow=flow_config,
            hift=HiFTConfig(**{k: _tuples(v) for k, v in data["hift"].items() if k in _HIFT_FIELDS}),
            mel=MelConfig(**data["mel"]),
        )


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _need(mapping: Any, key: str, where: str) -> Any:
    """`mapping[key]` (a dict or the kwargs of a `YamlCall`), or a ModelError naming the missing entry."""
    values = mapping.kwargs if isinstance(mapping, YamlCall) else mapping
    if not isinstance(values, dict) or key not in values:
        raise ModelError(f"{where}: missing `{key}`")
    return values[key]


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"{path}: missing")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ModelError(f"{path}: unreadable HyperPyYAML (larger than {MAX_YAML_BYTES} bytes)")
    try:
        return read_hyperpyyaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: unreadable HyperPyYAML ({first_line(exc)})") from None


def _qwen_config(path: Path) -> Qwen2Config:
    data = read_json(path)
    check_values(Qwen2Config, data, str(path))
    try:
        return Qwen2Config.from_hf(data)
    except ModelError as exc:
        raise ModelError(f"{path}: {strip_file_prefix(exc)}") from None


_DIT_KEYS = (
    "dim",
    "depth",
    "heads",
    "dim_head",
    "ff_mult",
    "mel_dim",
    "mu_dim",
    "spk_dim",
    "out_channels",
    "static_chunk_size",
)
_HIFT_KEYS = (
    "in_channels",
    "base_channels",
    "nb_harmonics",
    "sampling_rate",
    "nsf_alpha",
    "nsf_sigma",
    "nsf_voiced_threshold",
    "upsample_rates",
    "upsample_kernel_sizes",
    "resblock_kernel_sizes",
    "resblock_dilation_sizes",
    "source_resblock_kernel_sizes",
    "source_resblock_dilation_sizes",
    "lrelu_slope",
    "audio_limit",
)
_CONFORMER_KEYS = ("input_size", "output_size", "attention_heads", "linear_units", "num_blocks", "static_chunk_size")
_UNET_KEYS = (
    "in_channels",
    "out_channels",
    "attention_head_dim",
    "n_blocks",
    "num_mid_blocks",
    "num_heads",
    "static_chunk_size",
)
_FLOW_KEYS = ("vocab_size", "input_size", "output_size", "spk_embed_dim", "token_mel_ratio", "pre_lookahead_len")
_MEL_KEYS = ("n_fft", "num_mels", "sampling_rate", "hop_size", "win_size", "fmin", "fmax", "center")


def official_config(model_dir: Path, llm_state: dict[str, torch.Tensor], llm_path: Path) -> ModelConfig:
    """ModelConfig of an official directory: the family's yaml, `CosyVoice-BlankEN/config.json`, and llm.pt's shapes."""
    speech_rows = _speech_rows(llm_state, llm_path)
    name = family_of(model_dir)
    yaml_path = model_dir / family(name).yaml
    where = str(yaml_path)
    top = _read_yaml(yaml_path)
    qwen = _qwen_config(model_dir / BLANK_EN / "config.json")

    llm = _need(top, "llm", where)
    sampling = _need(llm, "sampling", f"{where}: llm")
    speech_token_size = _need(llm, "speech_token_size", f"{where}: llm")
    check_value(speech_token_size, "int", "speech_token_size", f"{where}: llm.speech_token_size")
    if _need(llm, "llm_input_size", f"{where}: llm") != qwen.hidden_size:
        raise ModelError(f"{where}: llm_input_size differs from hidden_size of {BLANK_EN}/config.json")
    if speech_rows <= speech_token_size:
        raise ModelError(f"{where}: speech_token_size {speech_token_size} leaves no stop/sos rows in llm.pt")
    lm = LMConfig(
        qwen=qwen,
        speech_token_size=speech_token_size,
        extra_tokens=speech_rows - speech_token_size,
        decoder_bias="llm_decoder.bias" in llm_state,
        sos_task_embedding="llm_embedding.weight" in llm_state,
        **{k: _need(sampling, k, f"{where}: llm.sampling") for k in ("top_p", "top_k", "win_size", "tau_r")},
    )

    flow_node = _need(top, "flow", where)
    flow = _flow2_config(flow_node, where) if name == COSYVOICE2.name else _flow_config(flow_node, where)

    hift_node = _need(top, "hift", where)
    istft = _need(hift_node, "istft_params", f"{where}: hift")
    f0 = _need(hift_node, "f0_predictor", f"{where}: hift")
    hift_keys = _HIFT_KEYS if name == COSYVOICE2.name else (*_HIFT_KEYS, "conv_pre_look_right")  # v3: causal conv_pre
    hift = HiFTConfig(
        **{k: _tuples(_need(hift_node, k, f"{where}: hift")) for k in hift_keys},
        istft_n_fft=_need(istft, "n_fft", f"{where}: hift.istft_params"),
        istft_hop_len=_need(istft, "hop_len", f"{where}: hift.istft_params"),
        f0_num_class=_need(f0, "num_class", f"{where}: hift.f0_predictor"),
        f0_in_channels=_need(f0, "in_channels", f"{where}: hift.f0_predictor"),
        f0_cond_channels=_need(f0, "cond_channels", f"{where}: hift.f0_predictor"),
    )

    feat = _need(top, "feat_extractor", where)
    mel = MelConfig(**{k: _need(feat, k, f"{where}: feat_extractor") for k in _MEL_KEYS})
    config = ModelConfig(
        family=name,
        sample_rate=_need(top, "sample_rate", where),
        token_frame_rate=_need(top, "token_frame_rate", where),
        token_mel_ratio=_need(top, "token_mel_ratio", where),
        lm=lm,
        flow=flow,
        hift=hift,
        mel=mel,
    )
    check_config(config, where, YAML_PLACES)
    return config


def _cfm(flow_node: Any, where: str) -> tuple[Any, dict]:
    """The flow's `decoder` node and its `cfm_params` content."""
    decoder = _need(flow_node, "decoder", f"{where}: flow")
    cfm = _need(_need(decoder, "cfm_params", f"{where}: flow.decoder"), "content", f"{where}: flow.decoder.cfm_params")
    return decoder, {k: _need(cfm, k, f"{where}: cfm_params") for k in ("inference_cfg_rate", "t_scheduler")}


def _flow_config(flow_node: Any, where: str) -> FlowConfig:
    """CosyVoice3's flow: pre-lookahead conv and the DiT estimator."""
    decoder, cfm = _cfm(flow_node, where)
    estimator = _need(decoder, "estimator", f"{where}: flow.decoder")
    return FlowConfig(
        **{k: _need(flow_node, k, f"{where}: flow") for k in _FLOW_KEYS},
        pre_lookahead_channels=_need(_need(flow_node, "pre_lookahead_layer", f"{where}: flow"), "channels", where),
        **cfm,
        dit=DiTConfig(**{k: _need(estimator, k, f"{where}: flow.decoder.estimator") for k in _DIT_KEYS}),
    )


def _flow2_config(flow_node: Any, where: str) -> Flow2Config:
    """CosyVoice2's flow: the upsampling conformer encoder and the causal U-Net estimator (one `channels` level)."""
    decoder, cfm = _cfm(flow_node, where)
    encoder = _need(flow_node, "encoder", f"{where}: flow")
    estimator = _need(decoder, "estimator", f"{where}: flow.decoder")
    channels = _need(estimator, "channels", f"{where}: flow.decoder.estimator")
    if not isinstance(channels, list) or len(channels) != 1:
        raise ModelError(f"{where}: flow.decoder.estimator.channels: expected one level, got {channels!r}")
    return Flow2Config(
        **{k: _need(flow_node, k, f"{where}: flow") for k in _FLOW_KEYS},
        **cfm,
        encoder=ConformerConfig(**{k: _need(encoder, k, f"{where}: flow.encoder") for k in _CONFORMER_KEYS}),
        estimator=UNetConfig(
            channels=channels[0],
            **{k: _need(estimator, k, f"{where}: flow.decoder.estimator") for k in _UNET_KEYS},
        ),
    )


def _speech_rows(llm_state: dict[str, torch.Tensor], path: Path) -> int:
    weight = llm_state.get("speech_embedding.weight")
    if weight is None or weight.dim() != 2:
        raise ModelError(f"{path}: missing `speech_embedding.weight`")
    return weight.shape[0]


def read_config(path: str | Path, llm_file: str = "llm.pt") -> ModelConfig:
    """The ModelConfig of an official or converted CosyVoice3 or CosyVoice2 directory."""
    model_dir = existing_dir(path)
    family_of(model_dir)
    if is_converted(model_dir):
        return converted_config(model_dir / CONVERTED_CONFIG)
    llm_path = model_dir / llm_file
    return official_config(model_dir, load_pt(llm_path), llm_path)


def converted_config(path: Path) -> ModelConfig:
    try:
        config = ModelConfig.from_json(read_converted_json(path)["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"{path}: config does not match this voiceclone version ({first_line(exc)})") from None
    check_config(config, f"{path}: config")
    return config


def build_networks(config: ModelConfig) -> dict[str, nn.Module]:
    """The family's networks for `config`, keyed like its weight files; untrained (built under
    `torch.device("meta")` by the loader, which then assigns the weights)."""
    if family(config.family) is COSYVOICE2:
        return {"llm": CosyVoice3LM(config.lm), "flow": Flow2(config.flow), "hift": HiFT2(config.hift)}
    return {"llm": CosyVoice3LM(config.lm), "flow": Flow(config.flow), "hift": HiFT(config.hift, config.flow)}
