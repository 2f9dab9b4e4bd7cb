"""Every stage on a fake CUDA device (FakeTensorMode: shapes, dtypes and devices propagate, no GPU needed).

What torch 2.11's FakeTensorMode allows, and what these tests do about it:
- `module.to(...)` and `to_empty` of fake parameters fail ("Couldn't swap"), so the networks are built on the meta
  device (as the loader does) and `cast` below does what `.to("cuda", dtype)` does: PinnedDtype subtrees keep their
  dtypes, buffers made on the CPU move to the GPU.
- A one-element constant moved to CUDA under inference mode runs the real copy (no driver here): constant
  propagation is turned off (`CONSTANT_NUMEL_LIMIT = 0`).
- Values cannot be read (`.item()`, `bool(t)`, `.numpy()`): token sampling is fed through `TokenGenerator.sampler`,
  which still runs the device half (`sampling_scores`); the flow decides masking from host lengths; the engine's
  NaN/inf check of stage outputs (`engine.finite_flags`) is stood in by "all finite".
- CUDA-only calls go through `voiceclone.engine.cuda`, replaced here by stand-ins (graph capture runs the step
  eagerly, synchronize does nothing).
Every matmul, convolution and attention call is recorded with its dtypes to check the precision rules.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch._subclasses.fake_tensor as fake_tensor
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from voiceclone.engine import cuda, runtime
from voiceclone.engine import engine as engine_module
from voiceclone.engine.decoding import LMRequest, SlotDecoder, TokenGenerator, sampling_scores
from voiceclone.engine.engine import Engine, EngineSettings, _Row, _Segment
from voiceclone.errors import DeviceError
from voiceclone.frontend.prompt import PromptFeatures
from voiceclone.io.manifest import Row
from voiceclone.loading.config import build_networks
from voiceclone.loading.demo import model_config
from voiceclone.models import hift as hift_module
from voiceclone.models.attention import set_attention_backend
from voiceclone.models.network import PinnedDtype, StageDtypes

pytestmark = pytest.mark.fake_cuda

HALF = [torch.bfloat16, torch.float16]
BATCHES = [1, 16]
aten = torch.ops.aten
MATMULS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten.linear.default}
ATTENTION = {
    aten.scaled_dot_product_attention.default,
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_cudnn_attention.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_fused_attention_overrideable.default,
}
CONVS = {aten.conv1d.default, aten.conv1d.padding, aten.convolution.default, aten.conv_transpose1d.default}


class OpLog(TorchDispatchMode):
    """Records (op, dtypes of its tensor arguments, devices) of every aten call under it."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[object, tuple[torch.dtype, ...], set[str]]] = []
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
        tensors += [t for a in args if isinstance(a, list | tuple) for t in a if isinstance(t, torch.Tensor)]
        self.calls.append((func, tuple(t.dtype for t in tensors), {t.device.type for t in tensors}))
        self.sizes.append(max((t.numel() for t in tensors[1:]), default=0))  # a matmul's weight, a conv's kernel
        return func(*args, **(kwargs or {}))

    def dtypes(self, ops) -> set[torch.dtype]:
        return {dtype for func, dtypes, _ in self.calls if func in ops for dtype in dtypes[:1]}

    def big_dtypes(self, ops, numel: int) -> set[torch.dtype]:
        """`dtypes` of the calls whose second and later tensors hold at least `numel` elements."""
        calls = zip(self.calls, self.sizes, strict=True)
        return {dtypes[0] for (func, dtypes, _), size in calls if func in ops and size >= numel}


class FakeGraph:
    """A stand-in CUDA graph: `replay()` reruns the captured step into the output buffer."""

    def __init__(self, step, output):
        self.step, self.output = step, output

    def replay(self) -> None:
        self.output.copy_(self.step())


@pytest.fixture
def fake(monkeypatch):
    """A fake CUDA device: FakeTensorMode, stand-ins for `engine.cuda`, the HiFT noise tables kept free of fakes."""
    monkeypatch.setattr(fake_tensor, "CONSTANT_NUMEL_LIMIT", 0)
    monkeypatch.setattr(hift_module, "_noise_tables", {})
    captures = []

    def capture(step):
        output = step()
        captures.append(output.shape)
        return FakeGraph(step, output), output

    monkeypatch.setattr(cuda, "graphs_enabled", lambda device: device.type == "cuda")
    monkeypatch.setattr(cuda, "capture_graph", capture)
    monkeypatch.setattr(cuda, "synchronize", lambda device: None)
    monkeypatch.setattr(engine_module, "finite_flags", lambda tensors: [True] * len(tensors))
    with fake_tensor.FakeTensorMode() as mode:
        yield SimpleNamespace(mode=mode, captures=captures)


def cast(module: nn.Module, mode, dtype: torch.dtype, pinned: bool = False) -> nn.Module:
    """`module.to("cuda", dtype)` of a network built on the meta device, into fake CUDA tensors: floating tensors
    outside `PinnedDtype` subtrees take `dtype`; real CPU buffers (rotary tables, fixed noise) are copied."""
    pinned = pinned or isinstance(module, PinnedDtype)
    for store in (module._parameters, module._buffers):
        for name, tensor in store.items():
            if tensor is None:
                continue
            target = tensor.dtype if pinned or not tensor.is_floating_point() else dtype
            if tensor.is_meta:
                moved = torch.empty(tensor.shape, dtype=target, device="cuda")
            else:
                moved = mode.from_tensor(tensor).to("cuda", target)
            store[name] = nn.Parameter(moved, requires_grad=False) if store is module._parameters else moved
    for child in module.children():
        cast(child, mode, dtype, pinned)
    return module


def networks(fake, dtypes: StageDtypes) -> dict[str, nn.Module]:
    """The tiny demo model's three networks on the fake GPU, each in its stage's dtype (built on the meta device
    first, as the loader does: building a HiFT inside the mode fails at its `to_empty`)."""
    with fake_tensor.unset_fake_temporarily(), torch.device("meta"):
        built = build_networks(model_config("tiny"))
    stage = {"llm": dtypes.llm, "flow": dtypes.flow, "hift": dtypes.vocoder}
    return {name: cast(module.eval(), fake.mode, stage[name]) for name, module in built.items()}


def lengths(batch: int, base: int, step: int) -> list[int]:
    return [base + step * (i % 5) for i in range(batch)]


def scripted_sampler(lengths_by_row: dict[int, int], dtype_log: list):
    """A sampler fed with values: row i says token 7 until it has `lengths_by_row[i]` tokens, then EOS; it runs the
    device half of sampling and records the dtypes it sees."""

    def sample(logits, rows, config):
        logp, probs, ids = sampling_scores(logits, rows, config)
        assert logits.device.type == "cuda" and logits.shape == (len(rows), config.vocab_out)
        dtype_log.append((logits.dtype, logp.dtype, probs.dtype, ids.dtype))
        return [
            None if row is None else (config.first_stop_id if len(row.tokens) >= lengths_by_row[row.index] else 7)
            for row in rows
        ]

    return sample


def requests(batch: int) -> list[LMRequest]:
    return [
        LMRequest(list(range(3, 5 + i % 4)), [1, 2], list(range(10, 14 + i % 3)), seed=i, min_len=0, max_len=40)
        for i in range(batch)
    ]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("batch", BATCHES)
def test_qwen2_prefill_decode_and_sampling(fake, dtype, batch):
    lm = networks(fake, StageDtypes.of(dtype))["llm"]
    wanted = {i: n for i, n in enumerate(lengths(batch, 3, 4))}
    seen: list = []
    generator = TokenGenerator(lm, slots=batch, sampler=scripted_sampler(wanted, seen))
    with OpLog() as log:
        results = generator.generate(requests(batch), batch)
    assert [len(r.tokens) for r in results] == [wanted[i] for i in range(batch)]
    assert {r.stop_reason for r in results} == {"eos"}
    assert set(seen) == {(torch.float32, torch.float32, torch.float32, torch.int64)}  # logits and log-softmax
    assert log.dtypes(MATMULS) == {dtype}, "a big matmul ran in float32"
    assert log.dtypes(ATTENTION) == {dtype}
    assert {"cpu"} not in [devices for func, _, devices in log.calls if func in MATMULS]
    assert log.dtypes({aten.log_softmax.int, aten._log_softmax.default}) == {torch.float32}
    rotary = [d for func, d, _ in log.calls if func in (aten.cos.default, aten.sin.default)]
    assert rotary and all(d == (torch.float32,) for d in rotary), "rotary angles must stay float32"
    assert generator.counts == {"kv_cache_allocations": 1, "decode_graph_captures": len(fake.captures)}
    assert fake.captures and all(shape[0] == batch for shape in fake.captures)  # graphs step every slot


@pytest.mark.parametrize("dtype", HALF)
def test_prefix_assembly_and_slot_decoder_on_the_gpu(fake, dtype):
    lm = networks(fake, StageDtypes.of(dtype))["llm"]
    prefixes = [lm.prefix_embeds(r.text_ids, r.prompt_text_ids, r.prompt_speech_tokens) for r in requests(16)]
    assert {(p.device.type, p.dtype) for p in prefixes} == {("cuda", dtype)}
    decoder = SlotDecoder(lm, 16, 64, {"decode_graph_captures": 0})
    with torch.inference_mode():
        fresh = decoder.prefill(list(range(16)), prefixes)
        assert fresh.shape == (16, lm.config.vocab_out) and fresh.dtype == torch.float32
        logits = decoder.decode([7] * 5, [p.shape[0] for p in prefixes[:5]])  # 5 of 16 slots busy
    assert logits.shape == (5, lm.config.vocab_out) and logits.device.type == "cuda"
    assert decoder.counts["decode_graph_captures"] == 1 and fake.captures == [torch.Size([16, lm.config.vocab_out])]


def flow_inputs(batch: int, dtype: torch.dtype):
    tokens = [torch.randint(0, 6561, (n,), device="cuda") for n in lengths(batch, 6, 3)]
    prompt_tokens = [torch.randint(0, 6561, (n,), device="cuda") for n in lengths(batch, 4, 1)]
    prompt_feats = [torch.randn(2 * len(p), 80, device="cuda", dtype=dtype) for p in prompt_tokens]
    return tokens, prompt_tokens, prompt_feats, torch.randn(batch, 192, device="cuda")


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("batch", BATCHES)
def test_dit_estimator_and_flow_solve(fake, dtype, batch):
    flow = networks(fake, StageDtypes.of(dtype))["flow"]
    assert flow.noise.table.dtype == torch.float32 and flow.estimator.rotary_embed.inv_freq.dtype == torch.float32
    tokens, prompt_tokens, prompt_feats, embeddings = flow_inputs(batch, dtype)
    with OpLog() as log:
        mels = flow.inference(tokens, prompt_tokens, prompt_feats, embeddings)
    assert [m.shape for m in mels] == [(80, 2 * len(t)) for t in tokens]
    assert {(m.device.type, m.dtype) for m in mels} == {("cuda", torch.float32)}  # the Euler update in float32
    assert log.dtypes(MATMULS) == {dtype}, "a DiT projection ran in float32"
    assert log.dtypes(ATTENTION) == {dtype}
    assert log.dtypes(CONVS) == {dtype}
    with torch.inference_mode(), OpLog() as one:
        frames = 2 * max(len(p) + len(t) for p, t in zip(prompt_tokens, tokens, strict=True))
        x = torch.randn(2 * batch, frames, 80, device="cuda", dtype=dtype)
        modulation = [m[0] for m in flow.estimator.modulations(torch.tensor([0.5], device="cuda"))]
        mask = torch.ones(2 * batch, frames, dtype=torch.bool, device="cuda")
        velocity = flow.estimator(x, mask, x, modulation, torch.randn(2 * batch, 80, device="cuda", dtype=dtype), x)
    assert velocity.shape == x.shape and velocity.dtype == dtype
    assert one.dtypes(MATMULS) == {dtype}
    rotated = [d for func, d, _ in one.calls if func == aten.addcmul.default]
    assert rotated and all(torch.float32 in d for d in rotated), "the DiT rotary product must be float32"


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("batch", BATCHES)
def test_hift_on_the_gpu(fake, dtype, batch):
    hift = networks(fake, StageDtypes(vocoder=dtype))["hift"]
    mels = [torch.randn(80, n, device="cuda") for n in lengths(batch, 12, 5)]
    with OpLog() as log:
        wavs = hift.inference(mels)
    assert [w.shape for w in wavs] == [(480 * m.shape[-1],) for m in mels]
    assert {(w.device.type, w.dtype) for w in wavs} == {("cuda", torch.float32)}
    convs = log.dtypes(CONVS)
    assert torch.float64 in convs, "the F0 predictor must run in float64"
    assert convs - {torch.float64, torch.float32} == ({dtype} - {torch.float32}), "the conv stack's dtype"
    assert log.dtypes({aten.stft.default, aten.stft.center}) == {torch.float32}  # the source STFT
    assert log.dtypes({aten.istft.default}) == {torch.complex64}  # the iSTFT from float32 parts


def test_engine_glue_moves_pads_and_buckets_between_stages(fake):
    nets = networks(fake, StageDtypes(llm=torch.bfloat16, flow=torch.bfloat16, vocoder=torch.bfloat16))
    config = model_config("tiny")
    model = SimpleNamespace(
        config=config,
        device=torch.device("cuda"),
        dtypes=StageDtypes.of(torch.bfloat16),
        **dict(zip(("lm", "flow", "hift"), (nets["llm"], nets["flow"], nets["hift"]), strict=True)),
    )
    engine = Engine(model, EngineSettings(batch_size=16, max_padding=0.5))
    segments = []
    for i, request in enumerate(requests(20)):
        k = len(request.prompt_speech_tokens)
        prompt = PromptFeatures(torch.tensor(request.prompt_speech_tokens), torch.randn(2 * k, 80), torch.randn(192), 1)
        row = _Row(Row(f"r{i}", "p.wav", "text", "target", seed=i), prompt, [1, 2])
        row.segments.append(_Segment(row, request, len(request.text_ids) + 4 + k))
        segments.append(row.segments[0])
    wanted = {i: n for i, n in enumerate(lengths(20, 5, 3))}
    engine.tokens.sampler = scripted_sampler(wanted, [])
    engine._generate(segments)
    assert [seg.row.error for seg in segments] == [None] * 20
    assert sorted(len(seg.tokens) for seg in segments) == sorted(wanted.values())
    with OpLog() as log:
        for group in [segments[:7], segments[7:]]:
            engine._synthesise(group)
    assert [seg.row.error for seg in segments] == [None] * 20
    assert all(seg.wav.device.type == "cpu" and seg.wav.shape == (960 * len(seg.flow_tokens),) for seg in segments)
    assert engine.tokens.counts["kv_cache_allocations"] == 1
    assert log.big_dtypes(MATMULS, 1024) == {torch.bfloat16}
    # the small ones as in the reference: HiFT's source merge (float32) and F0 classifier (float64)
    assert log.dtypes(MATMULS) == {torch.bfloat16, torch.float32, torch.float64}


@pytest.mark.parametrize("bf16", [True, False])
def test_runtime_rules_on_a_stand_in_gpu(monkeypatch, bf16):
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "device_count", lambda: 2)
    monkeypatch.setattr(cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cuda, "has_bf16", lambda: bf16)
    monkeypatch.setattr(cuda, "device_name", lambda device: "Stand-in GPU")
    half = torch.bfloat16 if bf16 else torch.float16
    try:
        auto = runtime.resolve_runtime("auto", "auto", "auto")
        assert auto.device == torch.device("cuda", 0)
        assert auto.dtypes == StageDtypes.of(torch.bfloat16 if bf16 else torch.float32)
        mixed = runtime.resolve_runtime("cuda:1", "mixed", "efficient")
        assert mixed.dtypes == StageDtypes(llm=torch.float32, flow=half, vocoder=half)
        assert runtime.resolve_dtypes("float16", mixed.device) == StageDtypes.of(torch.float16)
        if not bf16:
            with pytest.raises(DeviceError, match="Stand-in GPU has no bfloat16 support"):
                runtime.resolve_dtype("bfloat16", mixed.device)
        with pytest.raises(DeviceError, match="only 2 CUDA device"):
            runtime.resolve_device("cuda:2")
    finally:
        set_attention_backend("auto", torch.device("cpu"), torch.float32)
