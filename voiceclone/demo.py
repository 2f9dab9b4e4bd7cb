"""Random-weight CosyVoice3 directories in the official release layout (the demo model and benchmark models)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from voiceclone.checkpoint import BLANK_EN, ModelConfig
from voiceclone.errors import UsageError
from voiceclone.files import build_folder
from voiceclone.frontend.features import MelConfig
from voiceclone.frontend.text import QWEN2_SPLIT_PATTERN
from voiceclone.models.dit import DiTConfig
from voiceclone.models.flow import Flow, FlowConfig
from voiceclone.models.hift import HiFT, HiFTConfig
from voiceclone.models.lm import CosyVoice3LM, LMConfig
from voiceclone.models.qwen2 import Qwen2Config

DEMO_FORMAT = 2  # bump whenever the demo files change, so cached copies are rebuilt
DEMO_SEED = 20251
BASE_VOCAB = 151643  # regular BPE entries of the Qwen2 vocabulary; <|endoftext|> follows
BASE_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ONNX_OPSET = 17
ONNX_IR_VERSION = 8

CORPUS = """
The quick brown fox jumps over the lazy dog.
Good morning, how are you today? I am fine, thank you.
She sells sea shells by the sea shore, and the shells she sells are surely sea shells.
We went to the market on Saturday to buy fresh bread, apples and a little cheese.
Please read the numbers one, two, three, four, five, six, seven, eight, nine and ten.
It was a bright cold day in April, and the clocks were striking thirteen.
The weather will be sunny this afternoon, with a light wind from the west.
Can you hear the music playing in the garden? It sounds wonderful tonight.
Speech synthesis turns written text into natural sounding voices.
今天天气很好，我们去公园散步吧。
我喜欢在周末读书、听音乐和做饭。
请把这句话读得慢一点，清楚一点。
语音合成可以把文字变成自然的声音。
明天早上八点，我们在火车站见面。
这家餐厅的面条非常好吃，价格也不贵。
"""


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
# CosyVoice-BlankEN: Qwen2 config and a small byte-level BPE padded to the Qwen2 id layout.


def _qwen_config_json(qwen: Qwen2Config) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": BASE_VOCAB,
        "eos_token_id": BASE_VOCAB,
        "hidden_act": "silu",
        "hidden_size": qwen.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": qwen.intermediate_size,
        "max_position_embeddings": qwen.max_position_embeddings,
        "max_window_layers": qwen.num_hidden_layers,
        "model_type": "qwen2",
        "num_attention_heads": qwen.num_attention_heads,
        "num_hidden_layers": qwen.num_hidden_layers,
        "num_key_value_heads": qwen.num_key_value_heads,
        "rms_norm_eps": qwen.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": qwen.rope_theta,
        "sliding_window": qwen.max_position_embeddings,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": qwen.vocab_size,
    }


def _tokenizer_config_json() -> dict:
    special = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(BASE_VOCAB + i): {"content": t, **special} for i, t in enumerate(BASE_SPECIALS)},
        "additional_special_tokens": list(BASE_SPECIALS[1:]),
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": BASE_SPECIALS[0],
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": BASE_SPECIALS[0],
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _train_bpe(vocab_size: int = 640) -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE (Qwen2 split regex, NFC) trained on the built-in corpus: vocabulary and merges."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS.strip().splitlines(), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return model["vocab"], merges


def write_blank_en(folder: Path, qwen: Qwen2Config) -> None:
    """`CosyVoice-BlankEN/`: config files and a BPE whose 151643 regular entries put the specials at their real ids."""
    folder.mkdir(parents=True)
    vocab, merges = _train_bpe()
    # Filler entries start with the bytes FF FE, which never occur in UTF-8 text, so no input reaches them.
    vocab.update({f"ÿþ{i:05x}": i for i in range(len(vocab), BASE_VOCAB)})
    _write_json(folder / "vocab.json", vocab, indent=None)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    _write_json(folder / "config.json", _qwen_config_json(qwen))
    _write_json(folder / "generation_config.json", {"bos_token_id": BASE_VOCAB, "eos_token_id": BASE_VOCAB})
    _write_json(folder / "tokenizer_config.json", _tokenizer_config_json())


def _write_json(path: Path, data: dict, indent: int | None = 2) -> None:
    separators = (",", ":") if indent is None else None
    text = json.dumps(data, indent=indent, ensure_ascii=False, separators=separators)
    path.write_text(text + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------------
# Stand-in ONNX front-end networks (random weights, real input/output contracts).


def _const(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _save_onnx(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="voiceclone.demo"
    )
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_campplus_onnx(path: Path, seed: int, channels: int = 64, embedding_dim: int = 192) -> None:
    """Speaker-embedding stand-in: `input` [B,T,80] fbank -> `output` [B,192] (2 convs, mean+std pooling, affine)."""
    rng = np.random.default_rng(seed)
    weights = [
        _const("w1", _normal(rng, (channels, 80, 3), 1 / math.sqrt(80 * 3))),
        _const("b1", _normal(rng, (channels,), 0.02)),
        _const("w2", _normal(rng, (channels, channels, 3), 1 / math.sqrt(channels * 3))),
        _const("b2", _normal(rng, (channels,), 0.02)),
        _const("w3", _normal(rng, (2 * channels, embedding_dim), 1 / math.sqrt(2 * channels))),
        _const("b3", _normal(rng, (embedding_dim,), 0.02)),
        _const("eps", np.array(1e-5, dtype=np.float32)),
    ]
    nodes = [
        helper.make_node("Transpose", ["input"], ["x"], perm=[0, 2, 1]),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1]),
        helper.make_node("Relu", ["c1"], ["h1"]),
        helper.make_node("Conv", ["h1", "w2", "b2"], ["c2"], pads=[1, 1]),
        helper.make_node("Relu", ["c2"], ["h"]),
        helper.make_node("ReduceMean", ["h"], ["mean_keep"], axes=[2], keepdims=1),
        helper.make_node("ReduceMean", ["h"], ["mean"], axes=[2], keepdims=0),
        helper.make_node("Sub", ["h", "mean_keep"], ["centred"]),
        helper.make_node("Mul", ["centred", "centred"], ["square"]),
        helper.make_node("ReduceMean", ["square"], ["var"], axes=[2], keepdims=0),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Concat", ["mean", "std"], ["pooled"], axis=1),
        helper.make_node("Gemm", ["pooled", "w3", "b3"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "campplus_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "frames", 80])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", embedding_dim])],
        initializer=weights,
    )
    _save_onnx(graph, path)


def write_speech_tokenizer_onnx(path: Path, seed: int, channels: int = 64, levels: int = 8) -> None:
    """Speech-tokenizer stand-in: `feats` [1,128,T] + `feats_length` [1] -> `indices` int64 [1, ceil(ceil(T/2)/2)].

    Frames past `feats_length` are zeroed; two stride-2 convs, a linear map to 8 dims, round(0.999*tanh)+1 digits in
    {0,1,2}, index = sum d_i 3^i (an FSQ-like code in [0, 6561))."""
    rng = np.random.default_rng(seed)
    weights = [
        _const("w1", _normal(rng, (channels, 128, 3), 1 / math.sqrt(128 * 3))),
        _const("b1", _normal(rng, (channels,), 0.02)),
        _const("w2", _normal(rng, (channels, channels, 3), 1 / math.sqrt(channels * 3))),
        _const("b2", _normal(rng, (channels,), 0.02)),
        _const("w3", _normal(rng, (channels, levels), 2 / math.sqrt(channels))),
        _const("powers", (3.0 ** np.arange(levels)).astype(np.float32)),
        _const("zero", np.array(0, dtype=np.int64)),
        _const("one", np.array(1, dtype=np.int64)),
        _const("squash", np.array(0.999, dtype=np.float32)),
        _const("shift", np.array(1.0, dtype=np.float32)),
    ]
    nodes = [
        helper.make_node("Shape", ["feats"], ["frames_1d"], start=2, end=3),
        helper.make_node("Squeeze", ["frames_1d"], ["frames"]),
        helper.make_node("Range", ["zero", "frames", "one"], ["positions"]),
        helper.make_node("Cast", ["feats_length"], ["length"], to=TensorProto.INT64),
        helper.make_node("Less", ["positions", "length"], ["valid"]),
        helper.make_node("Cast", ["valid"], ["valid_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["feats", "valid_f"], ["x"]),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1], strides=[2]),
        helper.make_node("Relu", ["c1"], ["h1"]),
        helper.make_node("Conv", ["h1", "w2", "b2"], ["c2"], pads=[1, 1], strides=[2]),
        helper.make_node("Transpose", ["c2"], ["h2"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["h2", "w3"], ["z"]),
        helper.make_node("Tanh", ["z"], ["t"]),
        helper.make_node("Mul", ["t", "squash"], ["ts"]),
        helper.make_node("Round", ["ts"], ["r"]),
        helper.make_node("Add", ["r", "shift"], ["digits"]),
        helper.make_node("MatMul", ["digits", "powers"], ["code"]),
        helper.make_node("Cast", ["code"], ["indices"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(
        nodes,
        "speech_tokenizer_standin",
        [
            helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, 128, "frames"]),
            helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1]),
        ],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, [1, "tokens"])],
        initializer=weights,
    )
    _save_onnx(graph, path)


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
    builders = {"llm": (CosyVoice3LM, config.lm), "flow": (Flow, config.flow), "hift": (HiFT, config.hift)}
    states = {}
    for index, (name, (cls, cfg)) in enumerate(builders.items()):
        module = cls(cfg)
        randomize_(module, torch.Generator().manual_seed(seed * 1000 + index))
        states[name] = module.official_state_dict()
        del module
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
