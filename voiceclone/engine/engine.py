"""The batch engine: rows -> segments -> batched LLM -> flow -> vocoder -> joined waveforms.

Rows are read in windows of `EngineSettings.window_rows`. Inside a window every stage runs batched: the LLM with
continuous batching over all segments of all rows, then the flow and the vocoder in length buckets; `batching`
decides every batch and the one out-of-memory policy. Every network returns each row's batch-1 result, so a row's
audio never depends on its neighbours: on the CPU the flow and vocoder run one segment per call (bit-identical wav
bytes at any batch size), elsewhere in buckets (within 1e-4). A failing row yields a result with `error` set and the
run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import torch

from voiceclone.engine import batching, cuda, runtime
from voiceclone.engine.decoding import LMRequest, TokenGenerator
from voiceclone.errors import NonFiniteError, VoiceCloneError
from voiceclone.files import first_line
from voiceclone.frontend import text
from voiceclone.frontend.prompt import PromptFeatures
from voiceclone.io.audio import MAX_PROMPT_SECONDS
from voiceclone.io.manifest import Row
from voiceclone.loading.families import family
from voiceclone.seeds import segment_seed

STAGES = ("frontend", "llm", "flow", "hift")


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
    rows per window, and the padding a flow bucket may add (fraction of its shortest row)."""

    batch_size: int = 8
    max_batch_tokens: int = 32768
    text_frontend: bool = True
    window_rows: int = 64
    max_padding: float = 0.25


@dataclass
class _Segment:
    """One text segment of a row: its LLM request, then its tokens, waveform and cost share."""

    row: _Row
    request: LMRequest
    prefix_len: int
    tokens: list[int] = field(default_factory=list)
    flow_tokens: list[int] = field(default_factory=list)
    stop_reason: str = "eos"
    rng_state: torch.Tensor | None = None  # the row's generator after the LM's draws (a vocoder with noise goes on)
    wav: torch.Tensor | None = None


@dataclass
class _Row:
    """A row in flight: the row, its prompt features, segments, accumulated timings and error."""

    row: Row
    prompt: PromptFeatures | None = None
    prompt_text_ids: list[int] = field(default_factory=list)
    segments: list[_Segment] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    error: str | None = None


def _lm_work(seg: _Segment) -> int:
    """A segment's estimated LLM work: its prefix plus its length bound."""
    return seg.prefix_len + seg.request.max_len


def _flow_length(seg: _Segment) -> int:
    """A segment's flow length in tokens: its prompt's speech tokens plus its own."""
    return len(seg.row.prompt.speech_tokens) + len(seg.flow_tokens)


def finite_flags(tensors: list[torch.Tensor]) -> list[bool]:
    """Whether each tensor holds only finite values: one isfinite reduction per tensor, one device sync for all."""
    return torch.stack([torch.isfinite(t).all() for t in tensors]).tolist()


def _finite_or_error(results: list, what: str) -> list:
    """`results` (tensors or exceptions, one per row) with each tensor holding NaN or infinity replaced by a
    NonFiniteError naming `what` (`finite_flags`)."""
    tensors = [(i, r) for i, r in enumerate(results) if isinstance(r, torch.Tensor)]
    if tensors:
        finite = finite_flags([t for _, t in tensors])
        for (i, _), ok in zip(tensors, finite, strict=True):
            if not ok:
                results[i] = NonFiniteError(f"{what} holds NaN or infinite values")
    return results


def segment_token_limit(config) -> int:
    """The most text tokens one segment of this model may have (`text.max_segment_tokens`): its longest generation
    after a 30 s prompt fits the flow's noise table and the vocoder's."""
    samples_per_frame = config.sample_rate // (config.token_frame_rate * config.token_mel_ratio)
    frames = min(config.flow.noise_frames, config.hift.noise_samples // samples_per_frame)
    prompt_tokens = int(MAX_PROMPT_SECONDS * config.token_frame_rate)
    return text.max_segment_tokens(frames, config.token_mel_ratio, prompt_tokens, config.lm.max_token_text_ratio)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, VoiceCloneError):
        return str(exc)
    if cuda.is_out_of_memory(exc):
        return "out of memory even for this row alone"
    name, line = type(exc).__name__, first_line(exc)
    return line if line == name else f"{name}: {line}"


class Engine:
    """Runs rows (`io.manifest.Row`, made ready by `io.manifest.resolve`) through a loaded model
    (`loading.load.LoadedModel`) batch by batch. The engine owns its token generator (one KV cache of `batch_size`
    slots for the whole run; `stats` counts its allocations and CUDA-graph captures); prompt features come from the
    model's one prompt cache, keyed by `Row.prompt_sha256`."""

    def __init__(self, model, settings: EngineSettings | None = None):
        self.model = model
        self.settings = settings or EngineSettings()
        if self.settings.batch_size < 1 or self.settings.max_batch_tokens < 1 or self.settings.window_rows < 1:
            raise ValueError("batch_size, max_batch_tokens and window_rows must be positive")
        self.sample_rate = model.config.sample_rate
        self.segment_tokens = segment_token_limit(model.config)
        self.family = family(model.config.family)
        self.tokens = TokenGenerator(model.lm, slots=self.settings.batch_size)  # one KV cache for the run
        self.stats: dict[str, float] = {}

    def run(self, rows: Iterable[Row]) -> Iterator[SynthResult]:
        """Synthesise every row; yields results in completion order, failed rows included."""
        device = self.model.device
        runtime.reset_peak_memory(device)
        start, count, audio = time.perf_counter(), 0, 0.0
        iterator = iter(rows)
        while window := list(islice(iterator, self.settings.window_rows)):
            for result in self._run_window(window):
                count += 1
                audio += result.duration
                yield result
        wall = time.perf_counter() - start
        self.stats = {
            "rows": count,
            "audio_seconds": audio,
            "wall_seconds": wall,
            "rtf": wall / audio if audio else float("nan"),
            "peak_memory_bytes": runtime.peak_memory_bytes(device),
            **self.tokens.counts,
        }

    # -- one window -------------------------------------------------------------------------------------------------

    def _run_window(self, window: list[Row]) -> Iterator[SynthResult]:
        rows = [self._prepare(row) for row in window]
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
        s = self.settings
        device = self.model.device
        for group in batching.flow_batches(
            segments, _flow_length, device, s.batch_size, s.max_batch_tokens, s.max_padding
        ):
            self._synthesise(group)
            for row in {id(seg.row): seg.row for seg in group}.values():
                if id(row) in pending and (row.error or all(seg.wav is not None for seg in row.segments)):
                    del pending[id(row)]
                    yield self._result(row)

    def _prepare(self, row: Row) -> _Row:
        """Text to segments and token ids, prompt features (from the model's prompt cache), generation bounds."""
        state = _Row(row)
        start = time.perf_counter()
        try:
            if row.seed is None or row.prompt_sha256 is None:
                raise ValueError(f"row {row.id}: not resolved (run the rows through io.manifest.resolve first)")
            lm, tokenizer = self.model.lm, self.model.tokenizer
            target = text.normalize(row.target_text) if self.settings.text_frontend else row.target_text
            prompt_text = text.assemble_prompt_text(row.prompt_text) if self.family.system_prompt else row.prompt_text
            state.prompt_text_ids = tokenizer.encode(prompt_text)
            segments = text.split_segments(target, tokenizer, self.segment_tokens)
            pieces = [ids for ids in (tokenizer.encode(s) for s in segments) if ids]
            if not pieces:
                raise VoiceCloneError(f"row {row.id}: the target text has no tokens to speak")
            longest = max(len(ids) for ids in pieces)
            if longest > self.segment_tokens:
                raise VoiceCloneError(
                    f"row {row.id}: the target text has a run of {longest} tokens with no space or punctuation to "
                    f"split at; one segment fits at most {self.segment_tokens} (the flow's fixed noise table)"
                )
            state.prompt = self.model.prompts.get(row.prompt_audio, row.prompt_sha256)
            speech = [int(t) for t in state.prompt.speech_tokens.tolist()]
            for index, ids in enumerate(pieces):
                min_len, max_len = lm.generation_bounds(len(ids))
                request = LMRequest(ids, state.prompt_text_ids, speech, segment_seed(row.seed, index), min_len, max_len)
                prefix_len = lm.prefix_length(len(ids), len(state.prompt_text_ids), len(speech))
                state.segments.append(_Segment(state, request, prefix_len))
        except Exception as exc:
            state.error = _error_text(exc)
        state.timings["frontend"] = time.perf_counter() - start
        return state

    # -- stages ------------------------------------------------------------------------------------------------------

    def _generate(self, segments: list[_Segment]) -> None:
        """LLM tokens for every segment: one `TokenGenerator.generate` call per group of `batching.lm_groups`."""
        s, device = self.settings, self.model.device
        for group, slots in batching.lm_groups(segments, _lm_work, s.batch_size, s.max_batch_tokens):
            start = time.perf_counter()

            def call(items: list[_Segment], slots: int = slots) -> list:
                return self.tokens.generate([seg.request for seg in items], min(slots, len(items)))

            results = batching.split_on_failure(call, group, device)
            self._charge(group, "llm", time.perf_counter() - start, lambda seg: seg.prefix_len + len(seg.tokens))
            for seg, result in zip(group, results, strict=True):
                if isinstance(result, BaseException):
                    seg.row.error = seg.row.error or _error_text(result)
                    continue
                if result.error:
                    seg.row.error = seg.row.error or result.error
                    continue
                seg.tokens = [int(t) for t in result.tokens]
                seg.stop_reason = result.stop_reason
                seg.flow_tokens = self.model.lm.flow_tokens(seg.tokens) if self.family.silent_token_rule else seg.tokens
                if self.family.vocoder_noise:
                    seg.rng_state = result.generator.get_state()

    def _synthesise(self, group: list[_Segment]) -> None:
        """Flow then vocoder for one length bucket of segments; fills `segment.wav`."""
        group = [seg for seg in group if not seg.row.error]
        device, dtype = self.model.device, self.model.dtypes.flow
        start = time.perf_counter()
        mels = batching.split_on_failure(lambda items: self._flow_call(items, device, dtype), group, device)
        mels = _finite_or_error(mels, "the flow's mel")
        self._charge(group, "flow", time.perf_counter() - start, lambda seg: len(seg.flow_tokens))
        ready = []
        for seg, mel in zip(group, mels, strict=True):
            if isinstance(mel, BaseException):
                seg.row.error = seg.row.error or _error_text(mel)
            else:
                ready.append((seg, mel))

        def vocode(items: list[tuple[_Segment, torch.Tensor]]) -> list[torch.Tensor]:
            return self._vocoder_call([seg for seg, _ in items], [mel for _, mel in items])

        for batch in batching.vocoder_batches(ready, device):
            start = time.perf_counter()
            wavs = _finite_or_error(batching.split_on_failure(vocode, batch, device), "the vocoder's waveform")
            self._charge([seg for seg, _ in batch], "hift", time.perf_counter() - start, lambda s: len(s.flow_tokens))
            for (seg, _), wav in zip(batch, wavs, strict=True):
                if isinstance(wav, BaseException):
                    seg.row.error = seg.row.error or _error_text(wav)
                else:
                    seg.wav = wav.detach().float().cpu()

    def _flow_call(self, segments: list[_Segment], device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
        prompts = [seg.row.prompt for seg in segments]
        return self.model.flow.inference(
            [torch.tensor(seg.flow_tokens, dtype=torch.long, device=device) for seg in segments],
            [p.speech_tokens.to(device=device, dtype=torch.long) for p in prompts],
            [p.mel.to(device=device, dtype=dtype) for p in prompts],
            torch.stack([p.embedding for p in prompts]).to(device=device, dtype=dtype),
        )

    def _vocoder_call(self, segments: list[_Segment], mels: list[torch.Tensor]) -> list[torch.Tensor]:
        """The vocoder on `mels`; a family whose vocoder draws noise gets each segment's generator as the LM left it
        (a fresh copy per call, so a retried batch draws the same noise)."""
        if not self.family.vocoder_noise:
            return self.model.hift.inference(mels)
        return self.model.hift.inference(mels, [torch.Generator().set_state(seg.rng_state) for seg in segments])

    # -- accounting --------------------------------------------------------------------------------------------------

    @staticmethod
    def _charge(segments: list[_Segment], stage: str, seconds: float, weight: Callable[[_Segment], int]) -> None:
        """Share one batched call's time among its segments' rows in proportion to their work."""
        weights = [max(1, weight(seg)) for seg in segments]
        total = sum(weights)
        for seg, w in zip(segments, weights, strict=True):
            seg.row.timings[stage] += seconds * w / total

    def _result(self, state: _Row) -> SynthResult:
        timings = dict(state.timings)
        timings["total"] = sum(timings.values())
        result = SynthResult(
            id=state.row.id,
            sample_rate=self.sample_rate,
            text_tokens=sum(len(seg.request.text_ids) for seg in state.segments),
            prompt_text_tokens=len(state.prompt_text_ids),
            speech_tokens=[t for seg in state.segments for t in seg.tokens],
            min_tokens=sum(seg.request.min_len for seg in state.segments),
            max_tokens=sum(seg.request.max_len for seg in state.segments),
            segments=len(state.segments),
            timings=timings,
            error=state.error,
        )
        if not state.error:
            result.wav = torch.cat([seg.wav for seg in state.segments]).numpy()
            result.stop_reason = "max_len" if any(seg.stop_reason == "max_len" for seg in state.segments) else "eos"
        return result
