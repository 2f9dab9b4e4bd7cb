"""Every batching decision of the engine: LLM groups and decode-slot admission, flow and vocoder buckets, and the one
out-of-memory policy.

Batching never changes a row's tokens (every network returns each row's batch-1 result); it only decides speed and
memory. A batch is bounded by `batch_size` rows and by `max_batch_tokens` (rows x the longest row's length). On the CPU
the flow and the vocoder run one segment per call, so a row's wav bytes equal its batch-1 bytes exactly (batching gains
nothing there: the flow is GEMM-bound at batch 1); elsewhere they run in buckets, within 1e-4 of batch 1.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from voiceclone.engine import cuda

T = TypeVar("T")


def buckets(
    items: list[T], length: Callable[[T], int], batch_size: int, max_batch_tokens: int, max_padding: float
) -> list[list[T]]:
    """Consecutive groups of length-sorted `items`: at most `batch_size` long, within the token budget (rows x
    longest), and no row longer than `1 + max_padding` times the group's shortest (bounded padding waste)."""
    groups: list[list[T]] = []
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


def lm_groups(
    items: list[T], work: Callable[[T], int], batch_size: int, max_batch_tokens: int
) -> list[tuple[list[T], int]]:
    """LLM calls: items with their decode slot counts, longest estimated work (prefix + length bound) first, so that
    continuous batching fills the tail with short rows. A new group starts only where the token budget (slots x
    longest) allows twice the slots of the current one. A group never has more slots than rows."""

    def slots(item: T) -> int:
        return max(1, min(batch_size, max_batch_tokens // work(item)))

    groups: list[tuple[list[T], int]] = []
    for item in sorted(items, key=work, reverse=True):
        if groups and (groups[-1][1] == batch_size or slots(item) < 2 * groups[-1][1]):
            groups[-1][0].append(item)
        else:
            groups.append(([item], slots(item)))
    return [(group, min(slots, len(group))) for group, slots in groups]


def decode_slots(batch_size: int, waiting: int) -> int:
    """The KV-cache slots of one continuous-batching call: `batch_size`, or fewer when fewer rows wait."""
    return max(1, min(batch_size, waiting))


def admit(slots: Sequence[Any | None], waiting: deque[int]) -> list[tuple[int, int]]:
    """(slot, request index) pairs that fill the free slots with waiting requests, in their order."""
    free = [slot for slot, row in enumerate(slots) if row is None][: len(waiting)]
    return [(slot, waiting.popleft()) for slot in free]


def flow_batches(
    items: list[T],
    length: Callable[[T], int],
    device: torch.device,
    batch_size: int,
    max_batch_tokens: int,
    max_padding: float,
) -> list[list[T]]:
    """Flow calls: on the CPU one item per call (shortest first), so the result is bit-identical to batch 1;
    elsewhere `buckets`."""
    if device.type == "cpu":
        return [[item] for item in sorted(items, key=length)]
    return buckets(items, length, batch_size, max_batch_tokens, max_padding)


def vocoder_batches(items: list[T], device: torch.device) -> list[list[T]]:
    """Vocoder calls: on the CPU one item per call (bit-identical to batch 1; its elementwise-heavy layers are memory
    bound there, so batching only adds cache traffic); elsewhere one batch."""
    if device.type == "cpu":
        return [[item] for item in items]
    return [items] if items else []


def split_on_failure(call: Callable[[list[T]], list], items: list[T], device: torch.device) -> list:
    """`call(items)` under the one failure policy: out of memory, the batch is halved and each half retried (down to
    one row); any other error, the rows are retried one by one, so a failure is reported against the rows that cause
    it. On CUDA the device is synchronised before the batch counts as done, so an asynchronous error lands on it too.
    Returns one result or exception per item."""
    if not items:
        return []
    try:
        results = list(call(items))
        cuda.synchronize(device)
        return results
    except Exception as exc:
        if len(items) == 1:
            return [exc]
        if cuda.is_out_of_memory(exc):
            cuda.free_cached_memory(device)
            half = len(items) // 2
            return split_on_failure(call, items[:half], device) + split_on_failure(call, items[half:], device)
        return [result for item in items for result in split_on_failure(call, [item], device)]
