"""Speech-token decoding: the reference's RAS sampler, a static KV cache of decode slots, continuous batching.

The engine owns one `TokenGenerator` per run, and it one `SlotDecoder` (one KV cache and its CUDA graphs) for the whole
run; the network itself is `voiceclone.models.lm.CosyVoice3LM`. A row's tokens depend only on its seed and on the
logits: sampling runs on the host from float32 log-probabilities with the row's own CPU generator, so the same seed
gives the same tokens on the CPU and on a GPU wherever the logits agree (whatever the batch or the slot).
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from voiceclone.engine import batching, cuda
from voiceclone.models.lm import CosyVoice3LM, LMConfig
from voiceclone.models.qwen2 import KVCache

KV_BUCKET = 64  # decode attends to the first multiple of this many cache positions that covers every row


@dataclass
class LMRequest:
    """One row to generate: target text ids, prompt text ids, prompt speech tokens, seed and length bounds."""

    text_ids: Sequence[int]
    prompt_text_ids: Sequence[int]
    prompt_speech_tokens: Sequence[int]
    seed: int
    min_len: int
    max_len: int


NONFINITE = -1  # what `sample_step` returns for a row whose logits hold NaN or infinity


@dataclass
class LMResult:
    """Generated speech tokens (stop id excluded), why generation ended ("eos" | "max_len" | "nonfinite"), decoder
    steps run; "nonfinite": the row's logits held NaN or infinity, and `error` says so.

    `generator` is the row's generator after its last draw: the CosyVoice2 vocoder continues that stream, as the
    reference's global generator does.
    """

    tokens: list[int]
    stop_reason: str
    steps: int
    generator: torch.Generator | None = field(default=None, compare=False, repr=False)
    error: str | None = None


@dataclass
class _Row:
    """A request occupying a cache slot: its generator, next position, tokens so far and steps run."""

    index: int
    request: LMRequest
    generator: torch.Generator
    position: int
    tokens: list[int] = field(default_factory=list)
    steps: int = 0


def nucleus_sizes(sorted_probs: np.ndarray, top_p: float, top_k: int) -> np.ndarray:
    """How many of each row's descending probabilities (rows, K) the reference nucleus keeps.

    It takes tokens while the running float32 sum of those already taken is < top_p and fewer than top_k are taken.
    """
    running = np.add.accumulate(sorted_probs[:, : top_k - 1], axis=1, dtype=np.float32)
    below = running < np.float32(top_p)
    return 1 + np.where(below.all(axis=1), below.shape[1], below.argmin(axis=1))


def multinomial_draw(probs: np.ndarray, generator: torch.Generator) -> int:
    """`torch.multinomial(probs, 1)` on CPU: argmax(probs / Exp(1) noise), the same noise draws and the same result."""
    noise = torch.empty(len(probs)).exponential_(generator=generator).numpy()
    return int(np.argmax(probs / noise))


def ras_sample(
    nucleus_probs: np.ndarray,
    nucleus_ids: np.ndarray,
    scores: Callable[[], Tensor],
    history: list[int],
    generator: torch.Generator,
    config: LMConfig,
) -> int:
    """The reference `ras_sampling` for one row: one draw from the nucleus, then the repetition check.

    If the drawn id occurs >= win_size*tau_r times in the last win_size generated tokens, it is excluded from
    `scores()` (the row's log-probabilities after the stop mask, fetched only then) and one id is drawn from
    their full softmax instead.
    """
    drawn = int(nucleus_ids[multinomial_draw(nucleus_probs, generator)])
    if history[-config.win_size :].count(drawn) >= config.win_size * config.tau_r:
        fallback = scores().to("cpu", copy=True)
        fallback[drawn] = -float("inf")
        drawn = multinomial_draw(fallback.softmax(dim=0).numpy(), generator)
    return drawn


def sampling_scores(logits: Tensor, rows: Sequence[_Row | None], config: LMConfig) -> tuple[Tensor, Tensor, Tensor]:
    """The device half of a sampling step: float32 log-probabilities (slots, vocab_out) with the stop ids masked for
    rows below their min_len, and each row's `top_k` largest probabilities and their ids, in descending order."""
    logp = logits.float().log_softmax(dim=-1)
    block = [row is not None and row.steps < row.request.min_len for row in rows]
    if any(block):
        blocked = torch.tensor(block).to(logp.device, non_blocking=True)
        logp[:, config.first_stop_id :].masked_fill_(blocked[:, None], -float("inf"))
    probs, ids = logp.softmax(dim=-1).sort(dim=-1, descending=True, stable=True)
    top = min(config.top_k, logp.shape[-1])
    return logp, probs[:, :top], ids[:, :top]


def sample_step(logits: Tensor, rows: Sequence[_Row | None], config: LMConfig) -> list[int | None]:
    """RAS-sample one id per occupied row from float32 logits (slots, vocab_out); None for empty slots, NONFINITE for
    a row whose logits hold NaN or infinity (its softmax is then NaN throughout: the top probabilities, which come to
    the CPU anyway, tell)."""
    logp, probs, ids = sampling_scores(logits, rows, config)
    probs, ids = probs.cpu().numpy(), ids.cpu().numpy()
    sizes = nucleus_sizes(probs, config.top_p, config.top_k)
    out: list[int | None] = []
    for s, row in enumerate(rows):
        if row is None:
            out.append(None)
            continue
        if not np.isfinite(probs[s]).all():
            out.append(NONFINITE)
            continue
        keep = sizes[s]
        scores = partial(logp.select, 0, s)
        out.append(ras_sample(probs[s, :keep], ids[s, :keep], scores, row.tokens, row.generator, config))
    return out


Sampler = Callable[[Tensor, Sequence[_Row | None], LMConfig], list]


class TokenGenerator:
    """Speech tokens for `LMRequest`s by continuous batching on one static KV cache, kept for the whole run.

    Rows enter free cache slots as others finish (`batching.admit`); a row's draws come from
    `torch.Generator().manual_seed(seed)` in the reference's order, so one row equals the reference after
    `torch.manual_seed(seed)` and never depends on its batch neighbours. The cache has `slots` rows (the run's batch
    size) from the first call on and a length from the longest row so far, and grows only when a longer row comes, so
    a run allocates it (and captures its CUDA graphs) once however its groups differ. `counts` has the cache
    allocations and graph captures so far. `sampler` turns logits into ids (`sample_step`; a test may feed ids).
    """

    def __init__(self, lm: CosyVoice3LM, slots: int = 1, sampler: Sampler = sample_step):
        self.lm, self.slots, self.sampler = lm, slots, sampler
        self.decoder: SlotDecoder | None = None
        self.counts = {"kv_cache_allocations": 0, "decode_graph_captures": 0}

    @torch.inference_mode()
    def generate(self, requests: list[LMRequest], batch_size: int) -> list[LMResult]:
        """Generate every request with at most `batch_size` decode slots; results in request order."""
        lm, config = self.lm, self.lm.config
        results: list[LMResult | None] = [None] * len(requests)
        waiting = deque(i for i, r in enumerate(requests) if r.max_len > 0)
        for i, request in enumerate(requests):
            if request.max_len <= 0:
                results[i] = LMResult([], "max_len", 0, torch.Generator().manual_seed(request.seed))
        if not waiting:
            return results  # type: ignore[return-value]
        prefix_lens = [
            lm.prefix_length(len(r.text_ids), len(r.prompt_text_ids), len(r.prompt_speech_tokens)) for r in requests
        ]
        slots = batching.decode_slots(batch_size, len(waiting))
        decoder = self._slot_decoder(slots, max(prefix_lens[i] + requests[i].max_len for i in waiting))
        rows: list[_Row | None] = [None] * slots
        while waiting or any(rows):
            logits = None
            if any(rows):
                tokens = [row.tokens[-1] if row else 0 for row in rows]
                logits = decoder.decode(tokens, [row.position if row else 0 for row in rows])
                for row in rows:
                    if row:
                        row.position += 1
            admitted = batching.admit(rows, waiting)
            if admitted:
                for s, i in admitted:
                    generator = torch.Generator().manual_seed(requests[i].seed)
                    rows[s] = _Row(i, requests[i], generator, position=prefix_lens[i])
                prefixes = [_prefix(lm, requests[i]) for _, i in admitted]
                fresh = decoder.prefill([s for s, _ in admitted], prefixes)
                if logits is None:
                    logits = fresh.new_zeros(slots, fresh.shape[-1])
                logits[[s for s, _ in admitted]] = fresh
            for s, token in enumerate(self.sampler(logits, rows, config)):
                row = rows[s]
                if row is None:
                    continue
                row.steps += 1
                if token == NONFINITE:
                    error = "the LLM's logits hold NaN or infinite values"
                    results[row.index], rows[s] = (
                        LMResult(row.tokens, "nonfinite", row.steps, row.generator, error),
                        None,
                    )
                    continue
                if token >= config.first_stop_id:
                    results[row.index], rows[s] = LMResult(row.tokens, "eos", row.steps, row.generator), None
                    continue
                row.tokens.append(token)
                if len(row.tokens) >= row.request.max_len:
                    results[row.index], rows[s] = LMResult(row.tokens, "max_len", row.steps, row.generator), None
        return results  # type: ignore[return-value]

    def _slot_decoder(self, slots: int, longest: int) -> SlotDecoder:
        """The run's decoder when it fits (its cache and CUDA graphs are reused), else a new one with the run's slots
        and room for `longest` positions; if the run's slots do not fit in memory, from then on each call's."""
        old = self.decoder
        if old is not None and old.fits(slots, longest):
            return old
        want = max(slots, self.slots)
        longest = max(longest, old.cache.max_seq if old is not None else 0)
        max_seq = max(KV_BUCKET, 1 << (longest - 1).bit_length())  # few distinct sizes: a longer row rarely regrows
        self.decoder = old = None  # free the old cache before allocating the new one
        try:
            self.decoder = SlotDecoder(self.lm, want, max_seq, self.counts)
        except Exception as exc:
            if not (cuda.is_out_of_memory(exc) and want > slots):
                raise
            cuda.free_cached_memory(self.lm.speech_embedding.weight.device)
            self.slots = slots
            return self._slot_decoder(slots, longest)
        self.counts["kv_cache_allocations"] += 1
        return self.decoder


def _prefix(lm: CosyVoice3LM, request: LMRequest) -> Tensor:
    return lm.prefix_embeds(request.text_ids, request.prompt_text_ids, request.prompt_speech_tokens)


class SlotDecoder:
    """One static KV cache of `slots` rows and the steps that fill it: batched prefill, one-token decode of the first
    n slots (all of them when replayed from CUDA graphs).

    Where `cuda.graphs_enabled`, the decode step of every slot is replayed from CUDA graphs, one per attended key
    length, captured on first use (each counted in `counts["decode_graph_captures"]`) and checked once against the
    eager step; any capture failure falls back to eager decoding.
    """

    def __init__(self, lm: CosyVoice3LM, slots: int, max_seq: int, counts: dict[str, int] | None = None):
        weight = lm.speech_embedding.weight
        self.lm = lm
        self.cache = KVCache(lm.config.qwen, slots, max_seq, weight.dtype, weight.device)
        self.key_mask = torch.zeros(slots, max_seq, dtype=torch.bool, device=weight.device)  # positions holding keys
        self.token_pos = torch.zeros(2, slots, dtype=torch.long, device=weight.device)  # static decode inputs
        self.graphs: dict[int, tuple[Any, Tensor]] | None = {} if cuda.graphs_enabled(weight.device) else None
        self.counts = counts if counts is not None else {"decode_graph_captures": 0}

    def fits(self, slots: int, longest: int) -> bool:
        """Whether this decoder serves `slots` rows of up to `longest` positions with the model's current weights."""
        weight = self.lm.speech_embedding.weight
        same_weights = (self.cache.k.dtype, self.cache.k.device) == (weight.dtype, weight.device)
        return same_weights and self.cache.slots >= slots and self.cache.max_seq >= longest

    def prefill(self, slots: list[int], prefixes: list[Tensor]) -> Tensor:
        """Run prefixes (L_i, H) into cache `slots` from position 0.

        Returns float32 logits (n, vocab_out) of each prefix's last position.
        """
        device = prefixes[0].device
        lengths = torch.tensor([p.shape[0] for p in prefixes], device=device)
        x = nn.utils.rnn.pad_sequence(prefixes, batch_first=True)
        positions = torch.arange(x.shape[1], device=device)
        causal = positions[None, :] <= positions[:, None]
        mask = causal[None] & (positions[None, :] < lengths[:, None])[:, None, :]
        slot_index = torch.tensor(slots, device=device)
        hidden = self.lm.llm(x, positions.expand(len(prefixes), -1), mask[:, None], self.cache, slot_index)
        self.key_mask[slot_index] = torch.arange(self.cache.max_seq, device=device)[None, :] < lengths[:, None]
        last = hidden[torch.arange(len(prefixes), device=device), lengths - 1]
        return self.lm.llm_decoder(last).float()

    def decode(self, tokens: list[int], positions: list[int]) -> Tensor:
        """One step of the first n = len(tokens) slots (slot s feeds tokens[s] at positions[s]); float32 logits
        (n, vocab_out). Graph replays step every slot (the others feed token 0 at position 0, and their output is
        dropped).

        The result may be a view of a CUDA graph's output buffer: valid until the next call.
        """
        n = len(tokens)
        width = n if self.graphs is None else self.cache.slots
        idle = [0] * (width - n)
        self.token_pos[:, :width].copy_(torch.tensor([tokens + idle, positions + idle]))
        kv_len = min(self.cache.max_seq, -(-(max(positions) + 1) // KV_BUCKET) * KV_BUCKET)
        if self.graphs is None:
            return self._step(kv_len, width)
        if kv_len not in self.graphs:
            try:
                self.graphs[kv_len] = cuda.capture_graph(lambda: self._step(kv_len, width))
            except Exception as exc:  # any capture problem: decode eagerly from now on
                warnings.warn(f"CUDA graph decode disabled, decoding eagerly: {exc}", stacklevel=2)
                self.graphs = None
                return self._step(kv_len, width)[:n]
            self.counts["decode_graph_captures"] += 1
        graph, logits = self.graphs[kv_len]
        graph.replay()
        return logits[:n]

    def _step(self, kv_len: int, width: int) -> Tensor:
        """The decode step of the first `width` slots on the static inputs `token_pos`, attending to the first
        `kv_len` cache positions (idempotent: it rewrites the same keys and values)."""
        tokens, positions = self.token_pos[0, :width], self.token_pos[1, :width]
        key_mask = self.key_mask[:width]
        key_mask.scatter_(1, positions[:, None], True)
        x = self.lm.speech_embedding(tokens)[:, None]
        hidden = self.lm.llm(x, positions[:, None], key_mask[:, None, None, :kv_len], self.cache)
        return self.lm.llm_decoder(hidden[:, 0]).float()
