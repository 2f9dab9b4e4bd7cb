"""Random-weight CosyVoice3 directories in the official release layout (the demo model and benchmark models)."""

from __future__ import annotations

import json
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
from voiceclone.loading.layout import BLANK_EN
from voiceclone.loading.standins import write_blank_en, write_campplus_onnx, write_speech_tokenizer_onnx
from voiceclone.models.dit import DiTConfig
from voiceclone.models.flow import FlowConfig
from voiceclone.models.hift import HiFTConfig
from voiceclone.models.lm import LMConfig
from voiceclone.models.qwen2 import Qwen2Config

DEMO_FORMAT = 2  # bump whenever the demo files change, so cached copies are rebuilt
DEMO_SEED = 20251

# ---------------------------------------------------------------------------------------------------------------------
# Configurations.


def model_config(size: str) -> ModelConfig:
    """The dimensions of a demo model: "tiny" (like the parity fixture) or "full" (the released CosyVoice3-0.5B)."""
    full = ModelConfig(
        family="cosyvoice3",
        sample_rate=24000,
        token_frame_rate=25,
        token_mel_ratio=2,
        lm=LMConfig(qwen=Qwen2Config()),
        flow=FlowConfig(dit=DiTConfig()),
        hift=HiFTConfig(),
        mel=MelConfig(),
    )
    if size == "full":
        return full
    if size != "tiny":
        raise UsageError(f"--size: unknown size {size!r} (choose tiny or full)")
    qwen = Qwen2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=48
    )
    return replace(
        full,
        lm=replace(full.lm, qwen=qwen),
        flow=replace(full.flow, pre_lookahead_channels=64, dit=DiTConfig(dim=64, depth=2, heads=4, dim_head=16)),
        hift=replace(full.hift, base_channels=32, f0_cond_channels=32),
    )


def yaml_text(config: ModelConfig) -> str:
    """A HyperPyYAML recipe with the model blocks of a CosyVoice3 release, filled with `config`'s dimensions."""
    lm, flow, dit, hift, mel = config.lm, config.flow, config.flow.dit, config.hift, config.mel
    fmax = "null" if mel.fmax is None else mel.fmax
    return f"""# Random-weight CosyVoice3 model written by voiceclone.demo (format {DEMO_FORMAT}); not a released model.
# fixed params
sample_rate: {config.sample_rate}
llm_input_size: {lm.qwen.hidden_size}
llm_output_size: {lm.qwen.hidden_size}
spk_embed_dim: {flow.spk_embed_dim}
qwen_pretrain_path: ''
token_frame_rate: {config.token_frame_rate}
token_mel_ratio: {config.token_mel_ratio}
chunk_size: {dit.static_chunk_size // config.token_mel_ratio}
num_decoding_left_chunks: -1

llm: !new:cosyvoice.llm.llm.CosyVoice3LM
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    speech_token_size: {lm.speech_token_size}
    length_normalized_loss: True
    lsm_weight: 0
    mix_ratio: [5, 15]
    llm: !new:cosyvoice.llm.llm.Qwen2Encoder
        pretrain_path: !ref <qwen_pretrain_path>
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: {lm.top_p}
        top_k: {lm.top_k}
        win_size: {lm.win_size}
        tau_r: {lm.tau_r}

flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithDiT
    input_size: {flow.input_size}
    output_size: {flow.output_size}
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: {flow.vocab_size}
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: {flow.pre_lookahead_len}
    pre_lookahead_layer: !new:cosyvoice.transformer.upsample_encoder.PreLookaheadLayer
        in_channels: {flow.input_size}
        channels: {flow.pre_lookahead_channels}
        pre_lookahead_len: {flow.pre_lookahead_len}
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: {flow.output_size}
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: '{flow.t_scheduler}'
                training_cfg_rate: 0.2
                inference_cfg_rate: {flow.inference_cfg_rate}
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.DiT.dit.DiT
            dim: {dit.dim}
            depth: {dit.depth}
            heads: {dit.heads}
            dim_head: {dit.dim_head}
            ff_mult: {dit.ff_mult}
            mel_dim: {dit.mel_dim}
            mu_dim: {dit.mu_dim}
            spk_dim: {dit.spk_dim}
            out_channels: {dit.out_channels}
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: !ref <num_decoding_left_chunks>

hift: !new:cosyvoice.hifigan.generator.CausalHiFTGenerator
    in_channels: {hift.in_channels}
    base_channels: {hift.base_channels}
    nb_harmonics: {hift.nb_harmonics}
    sampling_rate: !ref <sample_rate>
    nsf_alpha: {hift.nsf_alpha}
    nsf_sigma: {hift.nsf_sigma}
    nsf_voiced_threshold: {hift.nsf_voiced_threshold}
    upsample_rates: {json.dumps(hift.upsample_rates)}
    upsample_kernel_sizes: {json.dumps(hift.upsample_kernel_sizes)}
    istft_params:
        n_fft: {hift.istft_n_fft}
        hop_len: {hift.istft_hop_len}
    resblock_kernel_sizes: {json.dumps(hift.resblock_kernel_sizes)}
    resblock_dilation_sizes: {json.dumps(hift.resblock_dilation_sizes)}
    source_resblock_kernel_sizes: {json.dumps(hift.source_resblock_kernel_sizes)}
    source_resblock_dilation_sizes: {json.dumps(hift.source_resblock_dilation_sizes)}
    lrelu_slope: {hift.lrelu_slope}
    audio_limit: {hift.audio_limit}
    conv_pre_look_right: {hift.conv_pre_look_right}
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.CausalConvRNNF0Predictor
        num_class: {hift.f0_num_class}
        in_channels: {hift.f0_in_channels}
        cond_channels: {hift.f0_cond_channels}

get_tokenizer: !name:cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer
    token_path: !ref <qwen_pretrain_path>
    skip_special_tokens: True
    version: cosyvoice3
allowed_special: 'all'
feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: {mel.n_fft}
    num_mels: {mel.num_mels}
    sampling_rate: !ref <sample_rate>
    hop_size: {mel.hop_size}
    win_size: {mel.win_size}
    fmin: {mel.fmin}
    fmax: {fmax}
    center: {mel.center}
"""


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
    """Write a random-weight model directory in the official release layout into `out` (a new or empty folder)."""
    if family != "cosyvoice3":
        raise UsageError(f"--family: only cosyvoice3 can be built (got {family!r})")
    out = Path(out)
    config = model_config(size)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cosyvoice3.yaml").write_text(yaml_text(config), encoding="utf-8")
    write_blank_en(out / BLANK_EN, config.lm.qwen)
    write_campplus_onnx(out / "campplus.onnx", seed + 1)
    write_speech_tokenizer_onnx(out / "speech_tokenizer_v3.onnx", seed + 2)
    for name, state in _random_networks(config, seed).items():
        torch.save(state, out / f"{name}.pt")
    return out


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "voiceclone"


def demo_model_dir() -> Path:
    """The tiny demo model in the user cache, built once (atomically, safe against concurrent builders)."""
    target = _cache_root() / f"demo-{DEMO_FORMAT}"
    if (target / "cosyvoice3.yaml").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        build_folder(target, lambda tmp: build_model_dir(tmp, size="tiny", seed=DEMO_SEED))
    except OSError:
        if not (target / "cosyvoice3.yaml").is_file():  # another builder won the race only if its result is there
            raise
    return target
