"""CosyVoice2/3 speech-token language model: prefix assembly, decoding, repetition-aware sampling."""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from voiceclone.errors import ModelError
from voiceclone.models.qwen2 import KVCache, Linear, Qwen2, Qwen2Config

OFFICIAL_QWEN_PREFIX = "llm.model.model."
OFFICIAL_LM_HEAD = "llm.model.lm_head.weight"
KV_BUCKET = 64  # decode attends to the first multiple of this many cache positions that covers every row


@dataclass
class LMConfig:
    """Speech-LM settings: the speech vocabulary, its special rows and the sampling recipe.

    CosyVoice3: sos and task_id are rows of the speech table, `llm_decoder` has no bias. CosyVoice2
    (`sos_task_embedding`): they are the two rows of a separate `llm_embedding` table, the decoder has a bias and
    3 extra rows (stop ids 6561-6563).
    """

    qwen: Qwen2Config = field(default_factory=Qwen2Config)
    speech_token_size: int = 6561
    extra_tokens: int = 200
    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1
    min_token_text_ratio: float = 2.0
    max_token_text_ratio: float = 20.0
    decoder_bias: bool = False
    sos_task_embedding: bool = False

    @property
    def vocab_out(self) -> int:
        return self.speech_token_size + self.extra_tokens

    @property
    def sos(self) -> int:
        return self.speech_token_size

    @property
    def eos(self) -> int:
        return self.speech_token_size + 1

    @property
    def task_id(self) -> int:
        return self.speech_token_size + 2

    @property
    def fill(self) -> int:
        return self.speech_token_size + 3

    @property
    def first_stop_id(self) -> int:
        """Every output id from here to `vocab_out - 1` ends a generation."""
        return self.speech_token_size


@dataclass
class LMRequest:
    """One row to generate: target text ids, prompt text ids, prompt speech tokens, seed and length bounds."""

    text_ids: Sequence[int]
    prompt_text_ids: Sequence[int]
    prompt_speech_tokens: Sequence[int]
    seed: int
    min_len: int
    max_len: int


@dataclass
class LMResult:
    """Generated speech tokens (stop id excluded), why generation ended ("eos" | "max_len"), decoder steps run.

    `generator` is the row's generator after its last draw: the CosyVoice2 vocoder continues that stream, as the
    reference's global generator does.
    """

    tokens: list[int]
    stop_reason: str
    steps: int
    generator: torch.Generator | None = field(default=None, compare=False, repr=False)


@dataclass
class _Row:
    """A request occupying a cache slot."""

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


def _ids(values: Sequence[int] | Tensor, device: torch.device) -> Tensor:
    return torch.as_tensor(values, dtype=torch.long).flatten().to(device)


def _official_key(name: str) -> str:
    return OFFICIAL_QWEN_PREFIX + name.removeprefix("llm.") if name.startswith("llm.") else name


class CosyVoice3LM(nn.Module):
    """Qwen2 backbone between a speech-token embedding table and a speech-token output layer (CosyVoice2 and 3)."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        if config.sos_task_embedding:  # registered first: llm.pt's key order
            self.llm_embedding = nn.Embedding(2, config.qwen.hidden_size)
        self.llm = Qwen2(config.qwen)
        self.llm_decoder = Linear(config.qwen.hidden_size, config.vocab_out, bias=config.decoder_bias)
        self.speech_embedding = nn.Embedding(config.vocab_out, config.qwen.hidden_size)

    # ---- checkpoint layout -------------------------------------------------------------------------------------

    def load_official_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Load llm.pt keys as saved (`llm.model.model.*`, `llm_decoder.*`, `speech_embedding.*`), strictly.

        The tied `llm.model.lm_head.weight` is only shape-checked: it is never computed nor kept.
        """
        own = self.state_dict()
        by_official = {_official_key(name): name for name in own}
        embed_shape = own["llm.embed_tokens.weight"].shape
        for key, value in sd.items():
            if key == OFFICIAL_LM_HEAD:
                if value.shape != embed_shape:
                    raise ModelError(f"llm.pt: {key} has shape {tuple(value.shape)}, expected {tuple(embed_shape)}")
                continue
            if key not in by_official:
                raise ModelError(f"llm.pt: unexpected key {key!r}")
            expected = own[by_official[key]].shape
            if value.shape != expected:
                raise ModelError(f"llm.pt: {key} has shape {tuple(value.shape)}, expected {tuple(expected)}")
        for key in by_official:
            if key not in sd:
                raise ModelError(f"llm.pt: missing key {key!r}")
        self.load_state_dict({name: sd[key] for key, name in by_official.items()}, strict=True)

    def official_state_dict(self) -> dict[str, Tensor]:
        """The llm.pt layout, with `llm.model.lm_head.weight` tied to the text embedding."""
        out: dict[str, Tensor] = {}
        backbone = False
        for name, value in self.state_dict().items():
            if backbone and not name.startswith("llm."):  # the head follows the backbone, as in llm.pt
                out[OFFICIAL_LM_HEAD] = out[OFFICIAL_QWEN_PREFIX + "embed_tokens.weight"]
            backbone = name.startswith("llm.")
            out[_official_key(name)] = value
        return out

    # ---- inputs and bounds -------------------------------------------------------------------------------------

    def generation_bounds(self, n_text_tokens: int) -> tuple[int, int]:
        """(min_len, max_len) of a generation from the number of TARGET text tokens (never the prompt text)."""
        return (
            int(n_text_tokens * self.config.min_token_text_ratio),
            int(n_text_tokens * self.config.max_token_text_ratio),
        )

    def prefix_embeds(
        self,
        text_ids: Sequence[int] | Tensor,
        prompt_text_ids: Sequence[int] | Tensor,
        prompt_speech_tokens: Sequence[int] | Tensor,
    ) -> Tensor:
        """(L, H): [sos, embed_tokens(prompt_text ++ text), task_id, speech_embedding(prompt_speech_tokens)]."""
        device = self.speech_embedding.weight.device
        text = torch.cat([_ids(prompt_text_ids, device), _ids(text_ids, device)])
        if self.config.sos_task_embedding:
            sos, task = self.llm_embedding.weight.unbind(0)
        else:
            sos, task = self.speech_embedding.weight[[self.config.sos, self.config.task_id]].unbind(0)
        return torch.cat(
            [
                sos[None],
                self.llm.embed_tokens(text),
                task[None],
                self.speech_embedding(_ids(prompt_speech_tokens, device)),
            ]
        )

    def teacher_forced_logits(self, prefix_embeds: Tensor, tokens: Sequence[int] | Tensor) -> Tensor:
        """float32 (T+1, vocab_out) logits of one causal pass over prefix (L, H) + tokens (T,).

        Row j predicts token j; the last row predicts the token after them.
        """
        device = prefix_embeds.device
        x = torch.cat([prefix_embeds, self.speech_embedding(_ids(tokens, device))])[None]
        length = x.shape[1]
        positions = torch.arange(length, device=device)
        causal = positions[None, :] <= positions[:, None]
        hidden = self.llm(x, positions[None], causal[None, None])
        return self.llm_decoder(hidden[0, prefix_embeds.shape[0] - 1 :]).float()

    # ---- sampling and the continuous-batching loop -------------------------------------------------------------

    def _sample(self, logits: Tensor, rows: Sequence[_Row | None]) -> list[int | None]:
        """RAS-sample one id per occupied row from float32 logits (slots, vocab_out); None for empty slots."""
        logp = logits.log_softmax(dim=-1)
        block = [row is not None and row.steps < row.request.min_len for row in rows]
        if any(block):
            blocked = torch.tensor(block).to(logp.device, non_blocking=True)
            logp[:, self.config.first_stop_id :].masked_fill_(blocked[:, None], -float("inf"))
        probs, ids = logp.softmax(dim=-1).sort(dim=-1, descending=True, stable=True)
        top = min(self.config.top_k, logp.shape[-1])
        probs, ids = probs[:, :top].cpu().numpy(), ids[:, :top].cpu().numpy()
        sizes = nucleus_sizes(probs, self.config.top_p, self.config.top_k)
        out: list[int | None] = []
        for s, row in enumerate(rows):
            if row is None:
                out.append(None)
                continue
            keep = sizes[s]
            scores = partial(logp.select, 0, s)
            out.append(ras_sample(probs[s, :keep], ids[s, :keep], scores, row.tokens, row.generator, self.config))
        return out

    @torch.inference_mode()
    def generate(self, requests: list[LMRequest], batch_size: int) -> list[LMResult]:
        """Generate every request with continuous batching on one static cache of `batch_size` slots; request order."""
        results: list[LMResult | None] = [None] * len(requests)
        waiting = deque(i for i, r in enumerate(requests) if r.max_len > 0)
        for i, request in enumerate(requests):
            if request.max_len <= 0:
                results[i] = LMResult([], "max_len", 0, torch.Generator().manual_seed(request.seed))
        if not waiting:
            return results  # type: ignore[return-value]
        prefix_lens = [len(r.prompt_text_ids) + len(r.text_ids) + 2 + len(r.prompt_speech_tokens) for r in requests]
        slots = max(1, min(batch_size, len(waiting)))
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
            admitted = [s for s in range(slots) if rows[s] is None][: len(waiting)]
            if admitted:
                for s in admitted:
                    i = waiting.popleft()
                    generator = torch.Generator().manual_seed(requests[i].seed)
                    rows[s] = _Row(i, requests[i], generator, position=prefix_lens[i])
                prefixes = [self._request_prefix(rows[s].request) for s in admitted]
                fresh = decoder.prefill(admitted, prefixes)
                if logits is None:
                    logits = fresh.new_zeros(slots, fresh.shape[-1])
                logits[admitted] = fresh
            for s, token in enumerate(self._sample(logits, rows)):
                row = rows[s]
                if row is None:
                    continue
                row.steps += 1
                if token >= self.config.first_stop_id:
                    results[row.index], rows[s] = LMResult(row.tokens, "eos", row.steps, row.generator), None
                    continue
                row.tokens.append(token)
                if len(row.tokens) >= row.request.max_len:
                    results[row.index], rows[s] = LMResult(row.tokens, "max_len", row.steps, row.generator), None
        return results  # type: ignore[return-value]

    def _request_prefix(self, request: LMRequest) -> Tensor:
        return self.prefix_embeds(request.text_ids, request.prompt_text_ids, request.prompt_speech_tokens)

    def _slot_decoder(self, slots: int, longest: int) -> SlotDecoder:
        """The decoder of the last call when it fits (its cache and CUDA graphs are reused), else a new one."""
        kept = self.__dict__.get("_decoder")
        if kept is None or not kept.fits(slots, longest):
            self.__dict__["_decoder"] = None  # free the old cache before allocating the new one
            max_seq = max(KV_BUCKET, 1 << (longest - 1).bit_length())  # few distinct sizes: reuse across calls
            kept = self.__dict__["_decoder"] = SlotDecoder(self, slots, max_seq)
        return kept


class SlotDecoder:
    """One static KV cache of `slots` rows and the steps that fill it: batched prefill, one-token decode of all slots.

    On CUDA the decode step is replayed from CUDA graphs (one per attended key length); each graph is checked once
    against the eager step, and any failure falls back to eager decoding.
    """

    def __init__(self, lm: CosyVoice3LM, slots: int, max_seq: int):
        weight = lm.speech_embedding.weight
        self.lm = lm
        self.cache = KVCache(lm.config.qwen, slots, max_seq, weight.dtype, weight.device)
        self.key_mask = torch.zeros(slots, max_seq, dtype=torch.bool, device=weight.device)  # positions holding keys
        self.token_pos = torch.zeros(2, slots, dtype=torch.long, device=weight.device)  # static decode inputs
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor]] | None = {} if weight.is_cuda else None

    def fits(self, slots: int, longest: int) -> bool:
        """Whether this decoder serves `slots` rows of up to `longest` positions with the model's current weights."""
        weight = self.lm.speech_embedding.weight
        same_weights = (self.cache.k.dtype, self.cache.k.device) == (weight.dtype, weight.device)
        return same_weights and self.cache.slots == slots and self.cache.max_seq >= longest

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
        """One step for every slot (slot s feeds tokens[s] at positions[s]); float32 logits (slots, vocab_out).

        The result may be a CUDA graph's output buffer: valid until the next call.
        """
        self.token_pos.copy_(torch.tensor([tokens, positions]))
        kv_len = min(self.cache.max_seq, -(-(max(positions) + 1) // KV_BUCKET) * KV_BUCKET)
        if self.graphs is None:
            return self._step(kv_len)
        if kv_len not in self.graphs:
            try:
                self.graphs[kv_len] = self._capture(kv_len)
            except Exception as exc:  # any capture problem: decode eagerly from now on
                warnings.warn(f"CUDA graph decode disabled, decoding eagerly: {exc}", stacklevel=2)
                self.graphs = None
                return self._step(kv_len)
        graph, logits = self.graphs[kv_len]
        graph.replay()
        return logits

    def _step(self, kv_len: int) -> Tensor:
        """The decode step on the static inputs `token_pos`, attending to the first `kv_len` cache positions."""
        tokens, positions = self.token_pos[0], self.token_pos[1]
        self.key_mask.scatter_(1, positions[:, None], True)
        x = self.lm.speech_embedding(tokens)[:, None]
        hidden = self.lm.llm(x, positions[:, None], self.key_mask[:, None, None, :kv_len], self.cache)
        return self.lm.llm_decoder(hidden[:, 0]).float()

    def _capture(self, kv_len: int) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        """Capture `_step(kv_len)` after an eager warm-up, and check one replay against it (the step is idempotent)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            expected = self._step(kv_len)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            logits = self._step(kv_len)
        graph.replay()
        if not torch.allclose(logits, expected, rtol=1e-3, atol=1e-3):
            raise RuntimeError("a replayed decode step differs from the eager step")
        return graph, logits
