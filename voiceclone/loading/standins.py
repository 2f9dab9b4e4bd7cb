"""Stand-in resource files for random-weight model folders: `CosyVoice-BlankEN` (the Qwen2 config and a small BPE
padded to the Qwen2 id layout) and the two ONNX front-end networks (random weights, real input/output contracts)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from voiceclone.frontend.text import QWEN2_SPLIT_PATTERN
from voiceclone.models.qwen2 import Qwen2Config

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
