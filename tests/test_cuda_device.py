"""Checks that need a real CUDA device (marker `cuda`; skipped without one; `benchmarks/gpu_check.py` runs them)."""

from __future__ import annotations

import pytest
import torch

from voiceclone.engine import cuda, runtime
from voiceclone.engine.decoding import LMRequest, TokenGenerator
from voiceclone.models.lm import CosyVoice3LM

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def requests(n: int) -> list[LMRequest]:
    return [
        LMRequest(
            list(range(30, 34 + i % 5)), [5, 6, 7], list(range(100, 120 + 3 * i)), seed=40 + i, min_len=2, max_len=90
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def lm(v3_model_dir) -> CosyVoice3LM:
    from voiceclone.loading.load import load_model

    return load_model(v3_model_dir, "cuda", torch.float32).lm


def test_auto_runtime_picks_the_gpu():
    rt = runtime.resolve_runtime("auto", "auto")
    assert rt.device.type == "cuda"
    assert rt.dtype == (torch.bfloat16 if cuda.has_bf16() else torch.float32)


def test_graph_decode_equals_eager_and_graphs_are_reused(lm, monkeypatch):
    graphed = TokenGenerator(lm, slots=8)
    first = graphed.generate(requests(12), 8)
    captures = graphed.counts["decode_graph_captures"]
    assert captures > 0 and graphed.counts["kv_cache_allocations"] == 1
    again = graphed.generate(requests(5), 4)  # another row count: same cache, same graphs
    assert graphed.counts == {"kv_cache_allocations": 1, "decode_graph_captures": captures}
    monkeypatch.setattr(cuda, "graphs_enabled", lambda device: False)
    eager = TokenGenerator(lm, slots=8)
    assert [r.tokens for r in eager.generate(requests(12), 8)] == [r.tokens for r in first]
    assert [r.tokens for r in eager.generate(requests(5), 4)] == [r.tokens for r in again]


def test_batch_does_not_change_tokens_in_float32(lm):
    alone = [TokenGenerator(lm).generate([r], 1)[0].tokens for r in requests(6)]
    batched = [r.tokens for r in TokenGenerator(lm, slots=6).generate(requests(6), 6)]
    assert batched == alone
