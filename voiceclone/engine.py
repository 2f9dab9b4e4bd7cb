"""The batch engine: rows -> segments -> batched LLM -> flow -> vocoder -> joined waveforms.

Rows are read in windows of `EngineSettings.window_rows`. Inside a window every stage runs batched: the LLM with
continuous batching over all segments of all rows (bucketed by estimated work), then the flow and the vocoder in
length buckets. Each stage's batch is bounded by `batch_size` rows and by `max_batch_tokens` (rows x the longest
row's tokens). Every network returns each row's batch-1 result, so a row's audio never depends on its neighbours.
A failing row yields a result with `error` set; CUDA out-of-memory splits the batch and retries the same rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voiceclone import runtime
from voiceclone.errors import VoiceCloneError
from voiceclone.files import first_line
from voiceclone.frontend import text
from voiceclone.models.lm import LMRequest
from voiceclone.seeds import row_seed

SILENT_TOKENS = frozenset({1, 2, 28, 29, 55, 248, 494, 2241, 2242, 2322, 2323})
MAX_SILENT_RUN = 5


@dataclass
class SynthRequest:
    """One row to synthesise: a prompt recording with its transcript, the text to speak, and the row's seed."""

    id: str
    prompt_audio: Path
    prompt_text: str
    target_text: str
    seed: int


@dataclass
class SynthResult:
    """What one row produced; `error` is set (and `wav` is None) when the row failed."""

    id: str
    wav: np.ndarray | None = None
    sample_rate: int = 0
    text_tokens: int = 0
    prompt_text_tokens: int = 0
    speech_tokens: list[int] = field(default_factory=list)
    min_tokens: int = 0
    max_tokens: int = 0
    stop_reason: str | None = None
    segments: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def duration(self) -> float:
        """Seconds of audio produced."""
        return len(self.wav) / self.sample_rate if self.wav is not None and self.sample_rate else 0.0

    @property
    def rtf(self) -> float | None:
        """Real-time factor: this row's share of compute seconds per second of audio."""
        return self.timings.get("total", 0.0) / self.duration if self.duration else None


@dataclass
class EngineSettings:
    """Scheduling knobs: rows per batch, the token budget of one batch (rows x longest row), text normalisation,
    rows per window, the padding a flow/vocoder bucket may add (fraction of its shortest row), and the CPU
    vocoder budget (mel frames x vocoder channels per batch)."""

    batch_size: int = 8
    max_batch_tokens: int = 32768
    text_frontend: bool = True
    window_rows: int = 64
    max_padding: float = 0.25
    vocoder_budget: int = 16384


@dataclass
class _Segment:
    """One text segment of a row: its LLM request, then its tokens, waveform and cost share."""

    row: _Row
    request: LMRequest
    prefix_len: int
    tokens: list[int] = field(default_factory=list)
    flow_tokens: list[int] = field(default_factory=list)
    stop_reason: str = "eos"
    wav: torch.Tensor | None = None


@dataclass
class _Row:
    """A row in flight: its request, prompt features, segments, accumulated timings and error."""

    request: SynthRequest
    prompt: Any = None
    prompt_text_ids: list[int] = field(default_factory=list)
    segments: list[_Segment] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("frontend", "llm", "flow", "hift"), 0.0))
    error: str | None = None


def segment_seed(row_seed_value: int, index: int) -> int:
    """The seed of segment `index` of a row: the row seed itself for segment 0, a stable derivation after that."""
    return row_seed_value if index == 0 else row_seed(row_seed_value, f"segment-{index}")


def flow_tokens(tokens: list[int]) -> list[int]:
    """Drop silent/breath tokens after more than `MAX_SILENT_RUN` in a row (the LLM still saw them)."""
    kept, run = [], 0
    for token in tokens:
        if token in SILENT_TOKENS:
            run += 1
            if run > MAX_SILENT_RUN:
                continue
        else:
            run = 0
        kept.append(token)
    return kept


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, VoiceCloneError):
        return str(exc)
    if runtime.is_out_of_memory(exc):
        return "out of memory even for this row alone"
    name, line = type(exc).__name__, first_line(exc)
    return line if line == name else f"{name}: {line}"


def _buckets(
    items: list, length: Callable[[Any], int], batch_size: int, max_batch_tokens: int, max_padding: float
) -> list[list]:
    """Consecutive groups of length-sorted `items`: at most `batch_size` long, within the token budget (rows x
    longest), and no row longer than `1 + max_padding` times the group's shortest (bounded padding waste)."""
    groups: list[list] = []
    for item in sorted(items, key=length):
        group = groups[-1] if groups else None
        if (
            group
            and len(group) < batch_size
            and (len(group) + 1) * length(item) <= max_batch_tokens
            and length(item) <= (1 + max_padding) * length(group[0])
        ):
            group.append(item)
        else:
            groups.append([item])
    return groups


class Engine:
    """Runs `SynthRequest`s through a loaded model (`checkpoint.LoadedModel`) batch by batch."""

    def __init__(self, model, settings: EngineSettings | None = None):
        self.model = model
        self.settings = settings or EngineSettings()
        if self.settings.batch_size < 1 or self.settings.max_batch_tokens < 1 or self.settings.window_rows < 1:
            raise ValueError("batch_size, max_batch_tokens and window_rows must be positive")
        self.sample_rate = model.config.sample_rate
        self.stats: dict[str, float] = {}

    def run(self, requests: Iterable[SynthRequest]) -> Iterator[SynthResult]:
        """Synthesise every request; yields results in completion order, failed rows included."""
        device = self.model.device
        runtime.reset_peak_memory(device)
        start, rows, audio = time.perf_counter(), 0, 0.0
        iterator = iter(requests)
        while window := list(islice(iterator, self.settings.window_rows)):
            for result in self._run_window(window):
                rows += 1
                audio += result.duration
                yield result
        wall = time.perf_counter() - start
        self.stats = {
            "rows": rows,
            "audio_seconds": audio,
            "wall_seconds": wall,
            "rtf": wall / audio if audio else float("nan"),
            "peak_memory_bytes": runtime.peak_memory_bytes(device),
        }

    # -- one window -------------------------------------------------------------------------------------------------

    def _run_window(self, requests: list[SynthRequest]) -> Iterator[SynthResult]:
        prompts: dict[Path, Any] = {}
        rows = [self._prepare(request, prompts) for request in requests]
        for row in rows:
            if row.error:
                yield self._result(row)
        live = [row for row in rows if not row.error]
        self._generate([segment for row in live for segment in row.segments])
        for row in live:
            if row.error:
                yield self._result(row)
        pending = {id(row): row for row in live if not row.error}
        segments = [segment for row in pending.values() for segment in row.segments]
        for group in self._token_buckets(segments, lambda s: len(s.row.prompt.speech_tokens) + len(s.flow_tokens)):
            self._synthesise(group)
            for row in {id(s.row): s.row for s in group}.values():
                if id(row) in pending and (row.error or all(s.wav is not None for s in row.segments)):
                    del pending[id(row)]
                    yield self._result(row)

    def _prepare(self, request: SynthRequest, prompts: dict[Path, Any]) -> _Row:
        """Text to segments and token ids, prompt features (once per distinct prompt), generation bounds."""
        row = _Row(request)
        start = time.perf_counter()
        try:
            tokenizer = self.model.tokenizer
            target = text.normalize(request.target_text) if self.settings.text_frontend else request.target_text
            row.prompt_text_ids = tokenizer.encode(text.assemble_prompt_text(request.prompt_text))
            pieces = [ids for ids in (tokenizer.encode(s) for s in text.split_segments(target, tokenizer)) if ids]
            if not pieces:
                raise VoiceCloneError(f"row {request.id}: the target text has no tokens to speak")
            path = Path(request.prompt_audio)
            if path not in prompts:
                try:
                    prompts[path] = self.model.frontend.extract(path)
                except Exception as exc:  # one broken prompt fails the rows that use it, nothing else
                    prompts[path] = exc
            if isinstance(prompts[path], Exception):
                raise prompts[path]
            row.prompt = prompts[path]
            speech = [int(t) for t in row.prompt.speech_tokens.tolist()]
            for index, ids in enumerate(pieces):
                min_len, max_len = self.model.lm.generation_bounds(len(ids))
                lm_request = LMRequest(
                    text_ids=ids,
                    prompt_text_ids=row.prompt_text_ids,
                    prompt_speech_tokens=speech,
                    seed=segment_seed(request.seed, index),
                    min_len=min_len,
                    max_len=max_len,
                )
                prefix = len(ids) + len(row.prompt_text_ids) + len(speech) + 2
                row.segments.append(_Segment(row, lm_request, prefix))
        except Exception as exc:
            row.error = _error_text(exc)
        row.timings["frontend"] = time.perf_counter() - start
        return row

    # -- stages ------------------------------------------------------------------------------------------------------

    def _generate(self, segments: list[_Segment]) -> None:
        """LLM tokens for every segment: one `lm.generate` call per group of `_lm_groups`."""
        for group, slots in self._lm_groups(segments):
            slots = min(slots, len(group))
            start = time.perf_counter()
            results = self._isolated(lambda items, slots=slots: self._lm_call(items, slots), group)
            self._charge(group, "llm", time.perf_counter() - start, lambda seg: seg.prefix_len + len(seg.tokens))
            for seg, result in zip(group, results, strict=True):
                if isinstance(result, BaseException):
                    seg.row.error = seg.row.error or _error_text(result)
                    continue
                seg.tokens = [int(t) for t in result.tokens]
                seg.stop_reason = result.stop_reason
                seg.flow_tokens = flow_tokens(seg.tokens)

    def _lm_call(self, segments: list[_Segment], slots: int) -> list:
        """`lm.generate`, halving the number of decode slots on out-of-memory (same rows, same results)."""
        while True:
            try:
                return self.model.lm.generate([seg.request for seg in segments], slots)
            except Exception as exc:
                if not runtime.is_out_of_memory(exc) or slots == 1:
                    raise
                runtime.free_cached_memory(self.model.device)
                slots //= 2

    def _synthesise(self, group: list[_Segment]) -> None:
        """Flow then vocoder for one length bucket of segments; fills `segment.wav`."""
        group = [seg for seg in group if not seg.row.error]
        device, dtype = self.model.device, self.model.dtype
        start = time.perf_counter()
        mels = self._isolated(lambda items: self._flow_call(items, device, dtype), group)
        self._charge(group, "flow", time.perf_counter() - start, lambda seg: len(seg.flow_tokens))
        ready = []
        for seg, mel in zip(group, mels, strict=True):
            if isinstance(mel, BaseException):
                seg.row.error = seg.row.error or _error_text(mel)
            else:
                ready.append((seg, mel))
        for batch in self._vocoder_batches(ready):
            start = time.perf_counter()
            wavs = self._isolated(lambda items: self.model.hift.inference([mel for _, mel in items]), batch)
            self._charge([s for s, _ in batch], "hift", time.perf_counter() - start, lambda s: len(s.flow_tokens))
            for (seg, _), wav in zip(batch, wavs, strict=True):
                if isinstance(wav, BaseException):
                    seg.row.error = seg.row.error or _error_text(wav)
                else:
                    seg.wav = wav.detach().float().cpu()

    def _vocoder_batches(self, ready: list[tuple[_Segment, torch.Tensor]]) -> list[list[tuple[_Segment, torch.Tensor]]]:
        """On the CPU, vocoder batches of at most `vocoder_budget` mel frames x vocoder width: its elementwise-heavy
        layers are memory bound there, and a batch that leaves the cache only adds traffic. Elsewhere, one batch."""
        if self.model.device.type != "cpu" or not ready:
            return [ready]
        width = self.model.config.hift.base_channels
        budget = self.settings.vocoder_budget
        return _buckets(ready, lambda item: item[1].shape[-1] * width, len(ready), budget, self.settings.max_padding)

    def _flow_call(self, segments: list[_Segment], device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
        prompts = [seg.row.prompt for seg in segments]
        return self.model.flow.inference(
            [torch.tensor(seg.flow_tokens, dtype=torch.long, device=device) for seg in segments],
            [p.speech_tokens.to(device=device, dtype=torch.long) for p in prompts],
            [p.mel.to(device=device, dtype=dtype) for p in prompts],
            torch.stack([p.embedding for p in prompts]).to(device=device, dtype=dtype),
        )

    # -- scheduling helpers ------------------------------------------------------------------------------------------

    def _lm_groups(self, segments: list[_Segment]) -> list[tuple[list[_Segment], int]]:
        """Segments with their decode slot counts, longest estimated work (prefix + length bound) first, so that
        continuous batching fills the tail with short rows. One `generate` call per group; a new group starts only
        where the token budget (slots x longest) allows twice the slots of the current one."""
        s = self.settings

        def slots(seg: _Segment) -> int:
            return max(1, min(s.batch_size, s.max_batch_tokens // (seg.prefix_len + seg.request.max_len)))

        groups: list[tuple[list[_Segment], int]] = []
        for seg in sorted(segments, key=lambda seg: seg.prefix_len + seg.request.max_len, reverse=True):
            if groups and (groups[-1][1] == s.batch_size or slots(seg) < 2 * groups[-1][1]):
                groups[-1][0].append(seg)
            else:
                groups.append(([seg], slots(seg)))
        return groups

    def _token_buckets(self, segments: list[_Segment], length: Callable[[_Segment], int]) -> list[list[_Segment]]:
        s = self.settings
        return _buckets(segments, length, s.batch_size, s.max_batch_tokens, s.max_padding)

    def _isolated(self, call: Callable[[list], list], items: list) -> list:
        """`call(items)`, split in halves on out-of-memory and run row by row on any other error, so a failure is
        reported against the rows that cause it; returns one result or exception per item."""
        if not items:
            return []
        try:
            return list(call(items))
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            if runtime.is_out_of_memory(exc):
                runtime.free_cached_memory(self.model.device)
                half = len(items) // 2
                return self._isolated(call, items[:half]) + self._isolated(call, items[half:])
            return [result for item in items for result in self._isolated(call, [item])]

    @staticmethod
    def _charge(segments: list[_Segment], stage: str, seconds: float, weight: Callable[[_Segment], int]) -> None:
        """Share one batched call's time among its segments' rows in proportion to their work."""
        weights = [max(1, weight(seg)) for seg in segments]
        total = sum(weights)
        for seg, w in zip(segments, weights, strict=True):
            seg.row.timings[stage] += seconds * w / total

    def _result(self, row: _Row) -> SynthResult:
        request = row.request
        timings = dict(row.timings)
        timings["total"] = sum(timings.values())
        result = SynthResult(
            id=request.id,
            sample_rate=self.sample_rate,
            text_tokens=sum(len(seg.request.text_ids) for seg in row.segments),
            prompt_text_tokens=len(row.prompt_text_ids),
            speech_tokens=[t for seg in row.segments for t in seg.tokens],
            min_tokens=sum(seg.request.min_len for seg in row.segments),
            max_tokens=sum(seg.request.max_len for seg in row.segments),
            segments=len(row.segments),
            timings=timings,
            error=row.error,
        )
        if not row.error:
            result.wav = torch.cat([seg.wav for seg in row.segments]).numpy()
            result.stop_reason = "max_len" if any(seg.stop_reason == "max_len" for seg in row.segments) else "eos"
        return result
