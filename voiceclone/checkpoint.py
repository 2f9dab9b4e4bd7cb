"""Model directories: safe HyperPyYAML reading, `ModelConfig`, loading official and converted directories,
`convert` and `inspect`."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import operator
import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from voiceclone import hub
from voiceclone.errors import ModelError
from voiceclone.files import build_folder, first_line
from voiceclone.frontend.features import MelConfig
from voiceclone.frontend.prompt import PromptFrontend
from voiceclone.frontend.text import Tokenizer
from voiceclone.models.dit import DiTConfig
from voiceclone.models.flow import Flow, FlowConfig
from voiceclone.models.hift import HiFT, HiFTConfig
from voiceclone.models.lm import CosyVoice3LM, LMConfig
from voiceclone.models.qwen2 import Qwen2Config

FORMAT_VERSION = 1
CONVERTED_CONFIG = "voiceclone.json"
BLANK_EN = "CosyVoice-BlankEN"
TOKENIZER_FILES = ("config.json", "tokenizer_config.json", "vocab.json", "merges.txt")
OPTIONAL_TOKENIZER_FILES = ("generation_config.json",)
ONNX_FILES = ("campplus.onnx", "speech_tokenizer_v3.onnx")
NETWORKS = ("llm", "flow", "hift")
FAMILY_YAMLS = {"cosyvoice3.yaml": "cosyvoice3", "cosyvoice2.yaml": "cosyvoice2", "cosyvoice.yaml": "cosyvoice1"}


# ---------------------------------------------------------------------------------------------------------------------
# Safe HyperPyYAML reading: tags become plain data, nothing is imported or executed.


@dataclass
class YamlCall:
    """A `!new:` / `!name:` / `!apply:` node kept as data: which callable, with which arguments."""

    kind: str
    target: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)


@dataclass
class _Ref:
    """An unresolved `!ref` / `!copy` expression such as `<chunk_size> * <token_mel_ratio>`."""

    expr: str


class _SafeHyperLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that turns HyperPyYAML tags into `YamlCall` / `_Ref` data."""


def _construct_call(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node, kind: str) -> YamlCall:
    if isinstance(node, yaml.MappingNode):
        return YamlCall(kind, tag_suffix, kwargs=loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return YamlCall(kind, tag_suffix, args=loader.construct_sequence(node, deep=True))
    value = loader.construct_scalar(node)
    return YamlCall(kind, tag_suffix, args=[] if value in ("", None) else [yaml.safe_load(value)])


for _kind in ("new", "name", "apply", "applyref"):
    _SafeHyperLoader.add_multi_constructor(
        f"!{_kind}:", lambda loader, suffix, node, kind=_kind: _construct_call(loader, suffix, node, kind)
    )
for _tag in ("!ref", "!copy"):
    _SafeHyperLoader.add_constructor(_tag, lambda loader, node: _Ref(loader.construct_scalar(node)))
_SafeHyperLoader.add_constructor("!tuple", lambda loader, node: tuple(loader.construct_sequence(node, deep=True)))
_SafeHyperLoader.add_constructor("!PLACEHOLDER", lambda loader, node: None)
# Any other local tag (`!include:file.yaml`, `!module:pkg`, ...) is kept as data too, with its name as the kind.
_SafeHyperLoader.add_multi_constructor(
    "!", lambda loader, suffix, node: _construct_call(loader, suffix.partition(":")[2], node, suffix.partition(":")[0])
)
# YAML 1.1 reads `1e-06` as a string; HyperPyYAML (like YAML 1.2) reads it as a float.
_SafeHyperLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)

_REF = re.compile(r"<([^<>]+)>")
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
MAX_YAML_BYTES = 1 << 20  # a real model yaml is ~10 KB
MAX_NUMBER = 2**63  # every arithmetic operand and result stays within this magnitude
MAX_EXPONENT = 64
MAX_DEPTH = 64  # nesting of lists, mappings and calls
MAX_EXPANSION = 200_000  # values and string characters produced while resolving (aliases and !ref included)


class _Budget:
    """Bounds the work of resolving one yaml file, so aliases or !ref chains cannot expand exponentially."""

    def __init__(self) -> None:
        self.used = 0

    def spend(self, amount: int, depth: int) -> None:
        self.used += amount
        if self.used > MAX_EXPANSION:
            raise ValueError(f"expands to more than {MAX_EXPANSION} values (alias or !ref bomb?)")
        if depth > MAX_DEPTH:
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep")


def _bounded(value: int | float) -> int | float:
    if isinstance(value, complex) or not abs(value) <= MAX_NUMBER:  # also refuses nan
        raise ValueError(f"arithmetic result {str(value)[:40]} is out of range")
    return value


def _arithmetic(node: ast.AST) -> int | float:
    """Evaluate a parsed expression made only of numbers and + - * / // % **, every value bounded by MAX_NUMBER."""
    if isinstance(node, ast.Expression):
        return _arithmetic(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return _bounded(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _arithmetic(node.left), _arithmetic(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is larger than {MAX_EXPONENT}")
        try:
            return _bounded(_BINOPS[type(node.op)](left, right))
        except (ZeroDivisionError, OverflowError) as exc:
            raise ValueError(str(exc)) from None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _arithmetic(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    raise ValueError("not arithmetic")


def _lookup(top: dict, key: str, resolving: set[str], budget: _Budget, depth: int) -> Any:
    """The value of a top-level key (dotted paths reach into mappings and call arguments)."""
    head, *rest = key.split(".")
    if head not in top:
        raise ValueError(f"!ref <{key}> names no top-level key")
    if head in resolving:
        raise ValueError(f"circular !ref <{key}>")
    value = _resolve(top[head], top, resolving | {head}, budget, depth + 1)
    for part in rest:
        values = value.kwargs if isinstance(value, YamlCall) else value
        if not isinstance(values, dict) or part not in values:
            raise ValueError(f"!ref <{key}>: `{part}` is not a key of a mapping there")
        value = values[part]
    return value


def _resolve_ref(expr: str, top: dict, resolving: set[str], budget: _Budget, depth: int) -> Any:
    names = _REF.findall(expr)
    if len(names) == 1 and expr.strip() == f"<{names[0]}>":
        return _lookup(top, names[0], resolving, budget, depth)
    values = {name: _lookup(top, name, resolving, budget, depth) for name in names}
    text = _REF.sub(lambda m: repr(values[m.group(1)]), expr)
    budget.spend(len(text), depth)
    try:
        return _arithmetic(ast.parse(text, mode="eval"))
    except (SyntaxError, RecursionError, MemoryError):
        pass
    except ValueError as exc:
        if str(exc) != "not arithmetic":
            raise ValueError(f"!ref {expr!r}: {exc}") from None
    return _REF.sub(lambda m: str(values[m.group(1)]), expr)


def _resolve(value: Any, top: dict, resolving: set[str], budget: _Budget, depth: int = 0) -> Any:
    budget.spend(len(value) if isinstance(value, str) else 1, depth)
    if isinstance(value, _Ref):
        return _resolve_ref(value.expr, top, resolving, budget, depth)
    if isinstance(value, YamlCall):
        return YamlCall(
            value.kind,
            value.target,
            [_resolve(v, top, resolving, budget, depth + 1) for v in value.args],
            {k: _resolve(v, top, resolving, budget, depth + 1) for k, v in value.kwargs.items()},
        )
    if isinstance(value, dict):
        return {k: _resolve(v, top, resolving, budget, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_resolve(v, top, resolving, budget, depth + 1) for v in value)
    return value


def read_hyperpyyaml(text: str, overrides: dict | None = None) -> dict:
    """Parse HyperPyYAML text into plain data: calls become `YamlCall`, `!ref` values are resolved.

    Hostile files are refused with ValueError: over MAX_YAML_BYTES, nested deeper than MAX_DEPTH, expanding (through
    aliases or !ref) to more than MAX_EXPANSION values, or arithmetic beyond MAX_NUMBER."""
    if len(text) > MAX_YAML_BYTES:
        raise ValueError(f"larger than {MAX_YAML_BYTES} bytes")
    try:
        top = yaml.load(text, Loader=_SafeHyperLoader) or {}
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(top, dict):
        raise ValueError("the top level is not a mapping")
    top.update(overrides or {})
    budget = _Budget()
    return {key: _resolve(value, top, {key}, budget) for key, value in top.items()}


# ---------------------------------------------------------------------------------------------------------------------
# ModelConfig: every dimension read from the directory.


@dataclass
class ModelConfig:
    """Everything needed to build the three networks and the front end of one model directory."""

    family: str
    sample_rate: int
    token_frame_rate: int
    token_mel_ratio: int
    lm: LMConfig
    flow: FlowConfig
    hift: HiFTConfig
    mel: MelConfig

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ModelConfig:
        lm, flow = dict(data["lm"]), dict(data["flow"])
        return cls(
            family=data["family"],
            sample_rate=data["sample_rate"],
            token_frame_rate=data["token_frame_rate"],
            token_mel_ratio=data["token_mel_ratio"],
            lm=LMConfig(qwen=Qwen2Config(**lm.pop("qwen")), **lm),
            flow=FlowConfig(dit=DiTConfig(**flow.pop("dit")), **flow),
            hift=HiFTConfig(**{k: _tuples(v) for k, v in data["hift"].items()}),
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


def family_of(model_dir: Path) -> str:
    """The model family named by the directory's yaml (or converted config); unsupported families raise ModelError."""
    converted = model_dir / CONVERTED_CONFIG
    if converted.is_file():
        return _read_converted_json(converted)["config"]["family"]
    found = [family for name, family in FAMILY_YAMLS.items() if (model_dir / name).is_file()]
    if "cosyvoice3" in found:
        return "cosyvoice3"
    if "cosyvoice2" in found:
        raise ModelError(f"{model_dir / 'cosyvoice2.yaml'}: CosyVoice2 model directories are not supported yet")
    if "cosyvoice1" in found:
        raise ModelError(f"{model_dir / 'cosyvoice.yaml'}: CosyVoice1 model directories are not supported")
    raise ModelError(f"{model_dir}: not a CosyVoice3 model directory (no cosyvoice3.yaml or {CONVERTED_CONFIG})")


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"{path}: missing")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ModelError(f"{path}: unreadable HyperPyYAML (larger than {MAX_YAML_BYTES} bytes)")
    try:
        return read_hyperpyyaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: unreadable HyperPyYAML ({first_line(exc)})") from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"{path}: missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def _qwen_config(path: Path) -> Qwen2Config:
    data = _read_json(path)
    try:
        return Qwen2Config.from_hf(data)
    except ModelError as exc:
        raise ModelError(f"{path}: {_strip_file_prefix(exc)}") from None


def _strip_file_prefix(exc: Exception) -> str:
    """The message of an error raised by a network or config loader, without its own short file-name prefix."""
    return re.sub(r"^[\w.-]+\.(pt|json): ", "", first_line(exc))


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
    "conv_pre_look_right",
)
_MEL_KEYS = ("n_fft", "num_mels", "sampling_rate", "hop_size", "win_size", "fmin", "fmax", "center")


def _official_config(model_dir: Path, llm_state: dict[str, torch.Tensor], llm_path: Path) -> ModelConfig:
    """ModelConfig of an official directory: the yaml, `CosyVoice-BlankEN/config.json`, and llm.pt's decoder shapes."""
    speech_rows = _speech_rows(llm_state, llm_path)
    yaml_path = model_dir / "cosyvoice3.yaml"
    where = str(yaml_path)
    top = _read_yaml(yaml_path)
    qwen = _qwen_config(model_dir / BLANK_EN / "config.json")

    llm = _need(top, "llm", where)
    sampling = _need(llm, "sampling", f"{where}: llm")
    speech_token_size = _need(llm, "speech_token_size", f"{where}: llm")
    if _need(llm, "llm_input_size", f"{where}: llm") != qwen.hidden_size:
        raise ModelError(f"{where}: llm_input_size differs from hidden_size of {BLANK_EN}/config.json")
    if speech_rows <= speech_token_size:
        raise ModelError(f"{where}: speech_token_size {speech_token_size} leaves no stop/sos rows in llm.pt")
    lm = LMConfig(
        qwen=qwen,
        speech_token_size=speech_token_size,
        extra_tokens=speech_rows - speech_token_size,
        decoder_bias="llm_decoder.bias" in llm_state,
        **{k: _need(sampling, k, f"{where}: llm.sampling") for k in ("top_p", "top_k", "win_size", "tau_r")},
    )

    flow_node = _need(top, "flow", where)
    decoder = _need(flow_node, "decoder", f"{where}: flow")
    cfm = _need(_need(decoder, "cfm_params", f"{where}: flow.decoder"), "content", f"{where}: flow.decoder.cfm_params")
    estimator = _need(decoder, "estimator", f"{where}: flow.decoder")
    flow = FlowConfig(
        **{
            k: _need(flow_node, k, f"{where}: flow")
            for k in (
                "vocab_size",
                "input_size",
                "output_size",
                "spk_embed_dim",
                "token_mel_ratio",
                "pre_lookahead_len",
            )
        },
        pre_lookahead_channels=_need(_need(flow_node, "pre_lookahead_layer", f"{where}: flow"), "channels", where),
        inference_cfg_rate=_need(cfm, "inference_cfg_rate", f"{where}: cfm_params"),
        t_scheduler=_need(cfm, "t_scheduler", f"{where}: cfm_params"),
        dit=DiTConfig(**{k: _need(estimator, k, f"{where}: flow.decoder.estimator") for k in _DIT_KEYS}),
    )

    hift_node = _need(top, "hift", where)
    istft = _need(hift_node, "istft_params", f"{where}: hift")
    f0 = _need(hift_node, "f0_predictor", f"{where}: hift")
    hift = HiFTConfig(
        **{k: _tuples(_need(hift_node, k, f"{where}: hift")) for k in _HIFT_KEYS},
        istft_n_fft=_need(istft, "n_fft", f"{where}: hift.istft_params"),
        istft_hop_len=_need(istft, "hop_len", f"{where}: hift.istft_params"),
        f0_num_class=_need(f0, "num_class", f"{where}: hift.f0_predictor"),
        f0_in_channels=_need(f0, "in_channels", f"{where}: hift.f0_predictor"),
        f0_cond_channels=_need(f0, "cond_channels", f"{where}: hift.f0_predictor"),
    )

    feat = _need(top, "feat_extractor", where)
    mel = MelConfig(**{k: _need(feat, k, f"{where}: feat_extractor") for k in _MEL_KEYS})
    return ModelConfig(
        family="cosyvoice3",
        sample_rate=_need(top, "sample_rate", where),
        token_frame_rate=_need(top, "token_frame_rate", where),
        token_mel_ratio=_need(top, "token_mel_ratio", where),
        lm=lm,
        flow=flow,
        hift=hift,
        mel=mel,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Reading weight files.


def load_pt(path: Path) -> dict[str, torch.Tensor]:
    """A `.pt` state dict, memory-mapped; anything but a readable dict of tensors raises ModelError naming the file."""
    if not path.is_file():
        raise ModelError(f"{path}: missing")
    try:  # files from torch.save are zip archives and can be memory-mapped; legacy pickles cannot
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # torch raises many kinds of error for a truncated or garbled archive
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors")
    return state


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A `.safetensors` file on the CPU; a missing or garbled file raises ModelError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelError(f"{path}: missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({first_line(exc)})") from None


def _speech_rows(llm_state: dict[str, torch.Tensor], path: Path) -> int:
    weight = llm_state.get("speech_embedding.weight")
    if weight is None or weight.dim() != 2:
        raise ModelError(f"{path}: missing `speech_embedding.weight`")
    return weight.shape[0]


def _read_converted_json(path: Path) -> dict:
    data = _read_json(path)
    if data.get("format") != "voiceclone" or data.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{path}: format {data.get('format')!r} version {data.get('format_version')!r} is not "
            f"voiceclone version {FORMAT_VERSION}; convert the model again"
        )
    _need(data, "config", str(path))
    return data


def _existing_dir(path: str | Path) -> Path:
    model_dir = hub.model_dir(path)
    if not model_dir.exists():
        raise ModelError(f"{model_dir}: model directory does not exist")
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: not a directory")
    return model_dir


def is_converted(model_dir: Path) -> bool:
    return (model_dir / CONVERTED_CONFIG).is_file()


def read_config(path: str | Path, llm_file: str = "llm.pt") -> ModelConfig:
    """The ModelConfig of an official or converted CosyVoice3 directory."""
    model_dir = _existing_dir(path)
    family_of(model_dir)
    if is_converted(model_dir):
        return _converted_config(model_dir / CONVERTED_CONFIG)
    llm_path = model_dir / llm_file
    return _official_config(model_dir, load_pt(llm_path), llm_path)


def _converted_config(path: Path) -> ModelConfig:
    try:
        return ModelConfig.from_json(_read_converted_json(path)["config"])
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{path}: config does not match this voiceclone version ({first_line(exc)})") from None


def _content_id(model_dir: Path, names: list[str], sample: int = 1 << 16) -> str:
    """A stable id from each file's name, size and three sampled 64 KiB blocks (start, middle, end).

    Copies and touched files keep their id; changed weights change it (without reading gigabytes)."""
    digest = hashlib.sha256()
    for name in names:
        path = model_dir / name
        size = path.stat().st_size
        digest.update(f"{name}\0{size}\n".encode())
        with path.open("rb") as f:
            for offset in sorted({0, max(0, size // 2 - sample // 2), max(0, size - sample)}):
                f.seek(offset)
                digest.update(f.read(sample))
    return digest.hexdigest()[:16]


def _network_files(converted: bool, llm_file: str) -> dict[str, str]:
    if converted:
        return {name: f"{name}.safetensors" for name in NETWORKS}
    return {"llm": llm_file, "flow": "flow.pt", "hift": "hift.pt"}


def model_id_of(model_dir: Path, llm_file: str = "llm.pt") -> str:
    """The id `--resume` compares: the source's id for a converted directory, else one from the weight files' stats."""
    if is_converted(model_dir):
        data = _read_converted_json(model_dir / CONVERTED_CONFIG)
        return str(data.get("model_id") or _content_id(model_dir, _converted_files()))
    return f"{family_of(model_dir)}-{_content_id(model_dir, _official_files(llm_file))}"


def _official_files(llm_file: str) -> list[str]:
    return [
        "cosyvoice3.yaml",
        llm_file,
        "flow.pt",
        "hift.pt",
        *ONNX_FILES,
        *(f"{BLANK_EN}/{n}" for n in TOKENIZER_FILES),
    ]


def _converted_files() -> list[str]:
    blank = [f"{BLANK_EN}/{n}" for n in TOKENIZER_FILES]
    return [CONVERTED_CONFIG, *(f"{n}.safetensors" for n in NETWORKS), *ONNX_FILES, *blank]


def _check_files(model_dir: Path, names: list[str]) -> None:
    for name in names:
        if not (model_dir / name).is_file():
            raise ModelError(f"{model_dir / name}: missing")


# ---------------------------------------------------------------------------------------------------------------------
# Loading.


@dataclass
class LoadedModel:
    """A ready model: config, text tokenizer, prompt front end and the three networks on one device."""

    config: ModelConfig
    tokenizer: Tokenizer
    frontend: PromptFrontend
    lm: CosyVoice3LM
    flow: Flow
    hift: HiFT
    device: torch.device
    dtype: torch.dtype
    model_dir: Path
    model_id: str


_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
)


@contextlib.contextmanager
def _no_default_init() -> Iterator[None]:
    """Skip `torch.nn.init` draws while networks are built only to be overwritten by a strict state-dict load."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def _build_networks(config: ModelConfig, states: dict[str, tuple[Path, dict]], official: bool) -> dict[str, Any]:
    """Build the three networks on the CPU (no default init: every tensor is loaded, strictly) and load them."""
    with _no_default_init():
        networks = {"llm": CosyVoice3LM(config.lm), "flow": Flow(config.flow), "hift": HiFT(config.hift)}
    for name, module in networks.items():
        path, state = states[name]
        try:
            if official:
                module.load_official_state_dict(state)
            else:
                module.load_state_dict(state, strict=True)
        except (ModelError, RuntimeError, KeyError, ValueError) as exc:
            raise ModelError(f"{path}: {_strip_file_prefix(exc)}") from None
        module.eval().requires_grad_(False)
    return networks


def _read_states(model_dir: Path, llm_file: str) -> tuple[ModelConfig, dict[str, tuple[Path, dict]], str]:
    """Config, state dicts and model id of an official or converted directory."""
    if is_converted(model_dir):
        _check_files(model_dir, _converted_files())
        config = _converted_config(model_dir / CONVERTED_CONFIG)
        paths = {name: model_dir / file for name, file in _network_files(True, llm_file).items()}
        states = {name: (path, load_safetensors(path)) for name, path in paths.items()}
    else:
        family_of(model_dir)
        _check_files(model_dir, _official_files(llm_file))
        paths = {name: model_dir / file for name, file in _network_files(False, llm_file).items()}
        states = {name: (path, load_pt(path)) for name, path in paths.items()}
        config = _official_config(model_dir, states["llm"][1], paths["llm"])
    return config, states, model_id_of(model_dir, llm_file)


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    llm_file: str = "llm.pt",
) -> LoadedModel:
    """Load an official CosyVoice3 directory, a converted one, or "demo" (the cached random-weight model).

    The LM and flow run in `dtype`; the vocoder stays float32 (its F0 path is float64 inside)."""
    if str(path) == "demo":
        from voiceclone.demo import demo_model_dir

        path = demo_model_dir()
    model_dir = _existing_dir(path)
    config, states, model_id = _read_states(model_dir, llm_file)
    networks = _build_networks(config, states, official=not is_converted(model_dir))
    del states
    device = torch.device(device)
    return LoadedModel(
        config=config,
        tokenizer=Tokenizer.from_dir(model_dir / BLANK_EN, config.family),
        frontend=PromptFrontend.from_model_dir(model_dir, config.mel, token_mel_ratio=config.token_mel_ratio),
        lm=networks["llm"].to(device=device, dtype=dtype),
        flow=networks["flow"].to(device=device, dtype=dtype),
        hift=networks["hift"].to(device=device),
        device=device,
        dtype=dtype,
        model_dir=model_dir,
        model_id=model_id,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Converting and inspecting.


def _copy_resources(src: Path, dst: Path) -> None:
    (dst / BLANK_EN).mkdir()
    for name in (*TOKENIZER_FILES, *OPTIONAL_TOKENIZER_FILES):
        if (src / BLANK_EN / name).is_file():
            shutil.copyfile(src / BLANK_EN / name, dst / BLANK_EN / name)
    for name in ONNX_FILES:
        shutil.copyfile(src / name, dst / name)


def convert(src: str | Path, dst: str | Path, llm_file: str = "llm.pt", overwrite: bool = False) -> Path:
    """Write `dst`: the networks as safetensors (weight norm folded, no lm_head), `voiceclone.json`, tokenizer, ONNX."""
    from safetensors.torch import save_file

    src_dir, dst = _existing_dir(src), Path(dst).expanduser()
    if is_converted(src_dir):
        raise ModelError(f"{src_dir}: already a converted directory")
    config, states, model_id = _read_states(src_dir, llm_file)
    networks = _build_networks(config, states, official=True)
    del states
    info = {
        "format": "voiceclone",
        "format_version": FORMAT_VERSION,
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
        (tmp / CONVERTED_CONFIG).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")

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
    model_dir = _existing_dir(path)
    converted = is_converted(model_dir)
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
        report["family"] = family_of(model_dir)
        names = _converted_files() if converted else _official_files(llm_file)
        problems += [f"{name}: missing" for name in names if not (model_dir / name).is_file()]
        config = read_config(model_dir, llm_file)
        report["config"] = config.to_json()
        for name, file in _network_files(converted, llm_file).items():
            if (model_dir / file).is_file():
                state = load_safetensors(model_dir / file) if converted else load_pt(model_dir / file)
                report["networks"][name] = {"file": file, **_tensor_summary(state)}
        if not problems:
            report["model_id"] = model_id_of(model_dir, llm_file)
    except ModelError as exc:
        problems.append(str(exc))
    official = report["family"] is not None and not converted
    if official and not (model_dir / BLANK_EN / "model.safetensors").is_file():
        problems.append(f"{BLANK_EN}/model.safetensors: missing (only the reference loader needs it)")
    if official and llm_file == "llm.pt" and (model_dir / "llm.rl.pt").is_file():
        report["notes"] = ["llm.rl.pt present: load it with llm_file='llm.rl.pt'"]
    return report
