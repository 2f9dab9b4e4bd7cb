"""HyperPyYAML recipes for random-weight model folders: the model blocks of a CosyVoice3 or CosyVoice2 release,
filled with a `ModelConfig`'s dimensions (what `loading.config.official_config` reads back)."""

from __future__ import annotations

import json

from voiceclone.loading.config import ModelConfig
from voiceclone.loading.families import COSYVOICE2, family
from voiceclone.models.hift import HiFTConfig


def yaml_text(config: ModelConfig, fmt: int) -> str:
    """The family's recipe for `config`; `fmt` is the demo format named in its header line."""
    if family(config.family) is COSYVOICE2:
        return _header(config, "Qwen2LM", fmt) + _flow2_block(config) + _hift_block(config.hift, False) + _tail(config)
    return _header(config, "CosyVoice3LM", fmt) + _flow_block(config) + _hift_block(config.hift, True) + _tail(config)


def _header(config: ModelConfig, lm_class: str, fmt: int) -> str:
    lm, chunk, title = config.lm, _chunk_tokens(config), family(config.family).title
    return f"""# Random-weight {title} model written by voiceclone.demo (format {fmt}); not a released model.
# fixed params
sample_rate: {config.sample_rate}
llm_input_size: {lm.qwen.hidden_size}
llm_output_size: {lm.qwen.hidden_size}
spk_embed_dim: {config.flow.spk_embed_dim}
qwen_pretrain_path: ''
token_frame_rate: {config.token_frame_rate}
token_mel_ratio: {config.token_mel_ratio}
chunk_size: {chunk}
num_decoding_left_chunks: -1

llm: !new:cosyvoice.llm.llm.{lm_class}
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

"""


def _chunk_tokens(config: ModelConfig) -> int:
    """The recipe's `chunk_size` (tokens): the estimator's chunk in mel frames over the token-to-mel ratio."""
    flow = config.flow
    frames = flow.estimator.static_chunk_size if family(config.family) is COSYVOICE2 else flow.dit.static_chunk_size
    return frames // config.token_mel_ratio


def _flow_head(config: ModelConfig, flow_class: str) -> str:
    flow = config.flow
    return f"""flow: !new:cosyvoice.flow.flow.{flow_class}
    input_size: {flow.input_size}
    output_size: {flow.output_size}
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: {flow.vocab_size}
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: {flow.pre_lookahead_len}
"""


def _decoder_head(config: ModelConfig) -> str:
    flow = config.flow
    return f"""    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
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
"""


def _flow_block(config: ModelConfig) -> str:
    """CosyVoice3's flow: pre-lookahead layer and the DiT estimator."""
    flow, dit = config.flow, config.flow.dit
    lookahead = f"""    pre_lookahead_layer: !new:cosyvoice.transformer.upsample_encoder.PreLookaheadLayer
        in_channels: {flow.input_size}
        channels: {flow.pre_lookahead_channels}
        pre_lookahead_len: {flow.pre_lookahead_len}
"""
    estimator = f"""        estimator: !new:cosyvoice.flow.DiT.dit.DiT
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

"""
    return _flow_head(config, "CausalMaskedDiffWithDiT") + lookahead + _decoder_head(config) + estimator


def _flow2_block(config: ModelConfig) -> str:
    """CosyVoice2's flow: the upsampling conformer encoder and the causal U-Net estimator."""
    encoder, unet = config.flow.encoder, config.flow.estimator
    encoder_text = f"""    encoder: !new:cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder
        output_size: {encoder.output_size}
        attention_heads: {encoder.attention_heads}
        linear_units: {encoder.linear_units}
        num_blocks: {encoder.num_blocks}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: {encoder.input_size}
        use_cnn_module: False
        macaron_style: False
        static_chunk_size: !ref <chunk_size>
"""
    estimator = f"""        estimator: !new:cosyvoice.flow.decoder.CausalConditionalDecoder
            in_channels: {unet.in_channels}
            out_channels: {unet.out_channels}
            channels: [{unet.channels}]
            dropout: 0.0
            attention_head_dim: {unet.attention_head_dim}
            n_blocks: {unet.n_blocks}
            num_mid_blocks: {unet.num_mid_blocks}
            num_heads: {unet.num_heads}
            act_fn: 'gelu'
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: !ref <num_decoding_left_chunks>

"""
    return _flow_head(config, "CausalMaskedDiffWithXvec") + encoder_text + _decoder_head(config) + estimator


def _hift_block(hift: HiFTConfig, causal: bool) -> str:
    """The vocoder: CosyVoice3's causal HiFT (with `conv_pre_look_right`) or CosyVoice2's HiFT."""
    generator, f0 = (
        ("CausalHiFTGenerator", "CausalConvRNNF0Predictor") if causal else ("HiFTGenerator", "ConvRNNF0Predictor")
    )
    look_right = f"    conv_pre_look_right: {hift.conv_pre_look_right}\n" if causal else ""
    return f"""hift: !new:cosyvoice.hifigan.generator.{generator}
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
{look_right}    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.{f0}
        num_class: {hift.f0_num_class}
        in_channels: {hift.f0_in_channels}
        cond_channels: {hift.f0_cond_channels}

"""


def _tail(config: ModelConfig) -> str:
    """The tokenizer and the prompt-mel extractor."""
    mel = config.mel
    fmax = "null" if mel.fmax is None else mel.fmax
    version = "" if family(config.family) is COSYVOICE2 else "    version: cosyvoice3\n"
    return f"""get_tokenizer: !name:cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer
    token_path: !ref <qwen_pretrain_path>
    skip_special_tokens: True
{version}allowed_special: 'all'
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
