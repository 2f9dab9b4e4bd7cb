"""Prompt front end: ONNX speech tokenizer and CAM++ speaker embedding, the flow prompt mel, cached by content."""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from voiceclone.errors import ModelError
from voiceclone.files import first_line
from voiceclone.frontend.features import (
    FEATURE_RATE,
    MelConfig,
    kaldi_fbank_cmn,
    load_mono,
    matcha_mel,
    whisper_log_mel,
)
from voiceclone.io.audio import AudioError, audio_info, prompt_problem

SPEECH_TOKENIZER_FILES = ("speech_tokenizer_v3.onnx", "speech_tokenizer_v2.onnx")
CAMPPLUS_FILE = "campplus.onnx"
WHISPER_MELS = 128  # the speech tokenizer's log-mel bands
FBANK_BINS = 80  # CAM++'s Kaldi fbank bins


@dataclass
class PromptFeatures:
    """Everything the LM and flow need from one prompt recording (shared between rows: treat as read-only)."""

    speech_tokens: torch.Tensor  # (k,) int64
    mel: torch.Tensor  # (2k, 80) float32, time-major
    embedding: torch.Tensor  # (192,) float32, not normalised
    duration_s: float


@dataclass(frozen=True)
class OnnxContract:
    """What the front end feeds an ONNX network and reads back, as the reference does (by position, not by name):
    each input's element type, rank and fixed sizes by axis; the first output's element types and fixed sizes."""

    role: str
    inputs: tuple[tuple[str, int, dict[int, int]], ...]
    output_types: frozenset[str]
    output_sizes: dict[int, int]
    description: str


def speech_tokenizer_contract() -> OnnxContract:
    return OnnxContract(
        "speech tokenizer",
        (("tensor(float)", 3, {1: WHISPER_MELS}), ("tensor(int32)", 1, {})),
        frozenset({"tensor(int64)", "tensor(int32)"}),
        {},
        f"inputs float [1, {WHISPER_MELS}, T] and int32 [1], an integer output",
    )


def campplus_contract(embedding_dim: int) -> OnnxContract:
    return OnnxContract(
        "speaker embedding (CAM++)",
        (("tensor(float)", 3, {2: FBANK_BINS}),),
        frozenset({"tensor(float)"}),
        {-1: embedding_dim},
        f"one input float [B, T, {FBANK_BINS}], a float output [B, {embedding_dim}]",
    )


def _shown(nodes) -> str:
    return ", ".join(f"{n.name}: {n.type.removeprefix('tensor(').rstrip(')')} {list(n.shape)}" for n in nodes)


def contract_problem(session, contract: OnnxContract) -> str | None:
    """How an open session's inputs and first output differ from `contract`, or None (symbolic sizes match any)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    ok = len(inputs) == len(contract.inputs) and bool(outputs)
    for node, (kind, rank, sizes) in zip(inputs, contract.inputs, strict=False):
        ok = ok and node.type == kind and len(node.shape) == rank and _sizes_match(node.shape, sizes)
    if ok and outputs[0].type in contract.output_types and _sizes_match(outputs[0].shape, contract.output_sizes):
        return None
    found = f"inputs {_shown(inputs) or 'none'}; outputs {_shown(outputs) or 'none'}"
    return f"not a {contract.role} ONNX model (expected {contract.description}; found {found})"


def _sizes_match(shape: list, sizes: dict[int, int]) -> bool:
    """Every fixed size of `sizes` (axis -> size) is what `shape` declares there, or `shape` leaves it symbolic."""
    for axis, size in sizes.items():
        if not -len(shape) <= axis < len(shape):
            return False
        declared = shape[axis]
        if isinstance(declared, int) and declared not in (size, -1):
            return False
    return True


class _OnnxModel:
    """A CPU onnxruntime session, opened and checked against its contract by `open` (at model load) or on first use;
    inputs and outputs are addressed by position."""

    def __init__(self, path: Path, threads: int, contract: OnnxContract | None = None):
        self.path, self.threads, self.contract = Path(path), threads, contract
        self._session = None

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        """Feed `inputs` in the model's input order and return its first output."""
        session = self.open()
        names = [node.name for node in session.get_inputs()]
        if len(names) != len(inputs):
            raise ModelError(f"{self.path}: expected an ONNX model with {len(inputs)} inputs, found {len(names)}")
        return session.run(None, dict(zip(names, inputs, strict=True)))[0]

    def open(self):
        """The session, opened once; a missing, unloadable or mismatched file raises ModelError naming it."""
        if self._session is None:
            session = self._load()
            problem = contract_problem(session, self.contract) if self.contract else None
            if problem:
                raise ModelError(f"{self.path}: {problem}")
            self._session = session
        return self._session

    def _load(self):
        import onnxruntime

        if not self.path.is_file():
            raise ModelError(f"{self.path}: ONNX model file missing")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        try:
            return onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unloadable files
            raise ModelError(f"{self.path}: cannot load ONNX model: {first_line(exc)}") from exc


class PromptFrontend:
    """Prompt wav -> `PromptFeatures` (speech tokens, 2:1-trimmed mel, CAM++ embedding)."""

    def __init__(
        self,
        speech_tokenizer_onnx: Path,
        campplus_onnx: Path,
        mel: MelConfig,
        token_mel_ratio: int = 2,
        threads: int | None = None,
        embedding_dim: int = 192,
    ):
        threads = threads or max(1, min(4, os.cpu_count() or 1))
        self.speech_tokenizer = _OnnxModel(speech_tokenizer_onnx, threads, speech_tokenizer_contract())
        self.campplus = _OnnxModel(campplus_onnx, threads, campplus_contract(embedding_dim))
        self.mel_config = mel
        self.token_mel_ratio = token_mel_ratio

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, mel: MelConfig, **kwargs) -> PromptFrontend:
        """Use the ONNX files of an official model directory (`speech_tokenizer_v3.onnx`, else v2; `campplus.onnx`)."""
        model_dir = Path(model_dir)
        candidates = [model_dir / name for name in SPEECH_TOKENIZER_FILES]
        tokenizer = next((path for path in candidates if path.is_file()), candidates[0])
        return cls(tokenizer, model_dir / CAMPPLUS_FILE, mel, **kwargs)

    def check(self) -> None:
        """Open both ONNX networks now and check them against what the front end feeds them (ModelError naming the
        file): a corrupt or swapped file is a model problem found at load, not a failure of every row."""
        self.speech_tokenizer.open()
        self.campplus.open()

    def extract(self, path: str | Path) -> PromptFeatures:
        """Features of one prompt file."""
        path = Path(path)
        problem = prompt_problem(path)
        if problem:
            raise AudioError(f"{path}: {problem}")
        return self._compute(path, audio_info(path).duration_s)

    def _compute(self, path: Path, duration_s: float) -> PromptFeatures:
        wav16 = load_mono(path, FEATURE_RATE)
        tokens = self.speech_tokens(wav16)
        embedding = self.speaker_embedding(wav16)
        mel = matcha_mel(load_mono(path, self.mel_config.sampling_rate), self.mel_config)[0].T
        k = min(mel.shape[0] // self.token_mel_ratio, tokens.shape[0])
        return PromptFeatures(
            speech_tokens=tokens[:k].clone(),
            mel=mel[: self.token_mel_ratio * k].contiguous(),
            embedding=embedding,
            duration_s=duration_s,
        )

    def speech_tokens(self, wav16k: torch.Tensor) -> torch.Tensor:
        """Untrimmed speech tokens (K,) int64 of a 16 kHz wave `(1, N)`."""
        feats = whisper_log_mel(wav16k, n_mels=WHISPER_MELS)
        length = np.array([feats.shape[-1]], dtype=np.int32)
        out = self.speech_tokenizer.run(feats.numpy().astype(np.float32), length)
        return torch.from_numpy(np.asarray(out).reshape(-1).astype(np.int64))

    def speaker_embedding(self, wav16k: torch.Tensor) -> torch.Tensor:
        """CAM++ embedding (192,) float32 of a 16 kHz wave `(1, N)`."""
        fbank = kaldi_fbank_cmn(wav16k)
        out = self.campplus.run(fbank.unsqueeze(0).numpy().astype(np.float32))
        return torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(-1).copy())


class PromptCache:
    """The one prompt-feature cache: features by the prompt file's sha256 (`Row.prompt_sha256`), so files with
    identical bytes are extracted once (LRU of `size`). A prompt that failed fails every row that uses it, without
    being extracted again."""

    def __init__(self, frontend: PromptFrontend, size: int = 512):
        self.frontend, self.size = frontend, size
        self._entries: OrderedDict[str, PromptFeatures | Exception] = OrderedDict()

    def get(self, path: Path, sha256: str) -> PromptFeatures:
        """The features of the prompt file at `path`, whose content digest is `sha256`."""
        if sha256 in self._entries:
            self._entries.move_to_end(sha256)
        else:
            try:
                self._entries[sha256] = self.frontend.extract(path)
            except Exception as exc:  # one broken prompt fails the rows that use it, nothing else
                self._entries[sha256] = exc
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
        entry = self._entries[sha256]
        if isinstance(entry, Exception):
            raise entry
        return entry
