"""Roofline projection ON PAPER (not a measurement) of the full-size CosyVoice3 (or CosyVoice2) pipeline on four GPUs.

Per stage and batch, FLOPs and bytes moved come from the full-size model's configuration (networks built on the meta
device: shapes only, no weights), and the projected time is max(FLOPs / peak FLOP/s, bytes / memory bandwidth) with
the datasheet peaks below. It is a floor: no kernel reaches its peak, and launch and synchronisation overheads are
left out. The LLM and the flow run in bfloat16 (the CUDA default); the vocoder's convolutions stay float32, which
cuDNN runs on TF32 tensor cores by default.

    python benchmarks/roofline.py     # prints the tables; writes benchmarks/results/roofline-projection.json
    python benchmarks/roofline.py --family cosyvoice2 --out benchmarks/results/roofline-projection-cosyvoice2.json
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf
import torch
from bench_e2e import PROMPT, TARGETS
from bench_stages import weight_bytes_per_step
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from voiceclone.frontend import text
from voiceclone.loading.config import build_networks
from voiceclone.loading.demo import model_config
from voiceclone.models.dit import DiT
from voiceclone.models.unet import CausalUNet

HERE = Path(__file__).resolve().parent
E2E_RESULTS = HERE / "results" / "e2e-cosyvoice3-full-cpu-avx512.json"
LABEL = "Roofline projection on paper from datasheet peaks: not a measurement; a floor on time (an RTF floor)"
STAGES = ("llm_prefill", "llm_decode", "flow", "vocoder")
CFG_BATCH = 2  # classifier-free guidance runs every row twice (conditioned and unconditioned)


@dataclass(frozen=True)
class GPU:
    """Datasheet peaks: dense tensor-core FLOP/s (bf16 with fp32 accumulation; tf32) and memory bandwidth."""

    name: str
    bf16_flops: float
    tf32_flops: float
    bandwidth: float  # bytes/s
    memory: str
    source: str


GPUS = (
    GPU(
        "H100 SXM", 989.4e12, 494.7e12, 3.35e12, "80 GB HBM3",
        "NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 1,979 and TF32 989 TFLOPS with sparsity, half "
        "that dense; 3.35 TB/s",
    ),
    GPU(
        "A100 80GB SXM", 312e12, 156e12, 2.039e12, "80 GB HBM2e",
        "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM): BF16 312 TFLOPS, TF32 156 TFLOPS dense; 2,039 GB/s",
    ),
    GPU(
        "L20", 119.5e12, 59.8e12, 0.864e12, "48 GB GDDR6",
        "NVIDIA L20 product specifications: FP16/BF16 tensor 119.5 TFLOPS, TF32 tensor 59.8 TFLOPS dense; "
        "864 GB/s",
    ),
    GPU(
        "RTX 4090", 165.2e12, 82.6e12, 1.008e12, "24 GB GDDR6X",
        "NVIDIA Ada Lovelace GPU architecture whitepaper, appendix A (GeForce RTX 4090): BF16 tensor with FP32 "
        "accumulate 165.2 TFLOPS, TF32 tensor 82.6 TFLOPS dense; 1,008 GB/s",
    ),
)  # fmt: skip

PUBLISHED = (
    {
        "runtime": "FlashCosyVoice (bf16 LLM + fp16 flow), CosyVoice2-0.5B",
        "gpu": "1x H800 80GB",
        "batch": "1024 rows per data loader batch, 32 per flow call",
        "rtf": "0.055",
        "source": "github.com/xingchensong/FlashCosyVoice README, Performance Benchmark (2,000 CV3-Eval requests)",
    },
    {
        "runtime": "CosyVoice runtime/triton_trtllm (TensorRT-LLM), CosyVoice3, offline",
        "gpu": "1x L20",
        "batch": "LLM batch 16 (0.1091 at batch 1)",
        "rtf": "0.0501",
        "source": "../shared/reference/cosyvoice.md section 6 (runtime/triton_trtllm/README.Cosyvoice3.md)",
    },
    {
        "runtime": "vLLM",
        "gpu": "H100",
        "batch": "batched",
        "rtf": "0.011-0.020",
        "source": "as quoted in issue 11; not in ../shared/reference/cosyvoice.md, primary source not located",
    },
)


@dataclass(frozen=True)
class Row:
    """One synthesised row: its LM prefix parts and how many speech tokens it generates."""

    name: str
    prompt_speech_tokens: int
    prompt_text_tokens: int
    text_tokens: float
    speech_tokens: float
    token_rate: int = 25
    token_mel_ratio: int = 2

    @property
    def prefix_tokens(self) -> float:
        """[sos] + prompt text + target text + [task] + prompt speech tokens."""
        return 2 + self.prompt_text_tokens + self.text_tokens + self.prompt_speech_tokens

    @property
    def audio_seconds(self) -> float:
        return self.speech_tokens / self.token_rate

    @property
    def flow_frames(self) -> float:
        """Mel frames the estimator computes: the prompt's and the new ones."""
        return self.token_mel_ratio * (self.prompt_speech_tokens + self.speech_tokens)


@dataclass(frozen=True)
class Work:
    """FLOPs and bytes of one stage for one batch, and which peak its FLOPs run at."""

    flops: float
    bytes: float
    peak: str  # "bf16" or "tf32"

    def seconds(self, gpu: GPU) -> tuple[float, str]:
        """Projected time and what bounds it ("compute" or "memory")."""
        compute = self.flops / (gpu.bf16_flops if self.peak == "bf16" else gpu.tf32_flops)
        memory = self.bytes / gpu.bandwidth
        return max(compute, memory), "compute" if compute >= memory else "memory"


def estimated_tokens(s: str) -> int:
    """Qwen2 BPE length estimated as one token per word, number, CJK character, punctuation mark or special token."""
    return len(re.findall(r"<\|[^|]+\|>|[A-Za-z']+|\d+|[\u4e00-\u9fff]|[^\sA-Za-z\d]", s))


def e2e_row(results: Path) -> Row:
    """The mean row of bench_e2e: its shared prompt, its 16 targets, and the speech tokens its fp32 batch-1 run made."""
    run = next(r for r in json.loads(results.read_text())["runs"] if r["dtype"] == "float32" and r["batch_size"] == 1)
    prompt_seconds = sf.info(PROMPT[0]).duration
    return Row(
        name=f"bench_e2e mean row ({results.name})",
        prompt_speech_tokens=int(prompt_seconds * 25),
        prompt_text_tokens=estimated_tokens(text.assemble_prompt_text(PROMPT[1])),
        text_tokens=sum(estimated_tokens(t) for t in TARGETS) / len(TARGETS),
        speech_tokens=run["audio_seconds"] * 25 / run["rows"],
    )


def _linear_and_conv_traffic(module: nn.Module, run) -> tuple[float, float]:
    """FLOPs of `run()` and the bytes its linears and convolutions read and write (activations; weights apart)."""
    moved = [0]

    def hook(_module, inputs, output):
        moved[0] += inputs[0].numel() * inputs[0].element_size() + output.numel() * output.element_size()

    kinds = (nn.Linear, nn.Conv1d, nn.ConvTranspose1d)
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, kinds)]
    with FlopCounterMode(display=False) as counter:
        run()
    for handle in handles:
        handle.remove()
    return counter.get_total_flops(), moved[0]


@dataclass(frozen=True)
class ModelCosts:
    """Per-token / per-frame costs of the full-size networks, in the dtypes they run in on a GPU."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    lm_weight_bytes: int  # read by every decode step: all but the embedding tables
    lm_flops_per_token: int  # 2 per weight of those matmuls
    lm_activation_bytes_per_token: int
    dit_weight_bytes: int
    dit_activation_bytes_per_frame: float
    solver_steps: int
    hift_weight_bytes: int
    hift_flops_per_frame: float
    hift_activation_bytes_per_frame: float

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2  # K and V, bfloat16


def model_costs(family: str = "cosyvoice3") -> tuple[ModelCosts, DiT | CausalUNet]:
    """Count the full-size model on the meta device; the flow's estimator (the DiT, or CosyVoice2's U-Net) is
    returned for its own `flops` formula."""
    config = model_config("full", family)
    qwen = config.lm.qwen
    with torch.device("meta"):
        networks = build_networks(config)
    lm, hift = networks["llm"].to(torch.bfloat16), networks["hift"].to("meta")  # HiFT float32 (F0 pinned)
    dit = networks["flow"].estimator.to(torch.bfloat16)
    lm_weights = weight_bytes_per_step(lm)
    linears = [m for m in lm.modules() if isinstance(m, nn.Linear)]
    frames = 64
    if isinstance(dit, DiT):
        x = torch.zeros(1, frames, config.flow.dit.mel_dim, device="meta", dtype=torch.bfloat16)
        spks = torch.zeros(1, config.flow.dit.spk_dim, device="meta", dtype=torch.bfloat16)
        modulation = [m[0] for m in dit.modulations(torch.zeros(1, device="meta"))]
        _, dit_moved = _linear_and_conv_traffic(dit, lambda: dit(x, None, x, modulation, spks, x))
    else:
        x = torch.zeros(1, config.flow.output_size, frames, device="meta", dtype=torch.bfloat16)
        mask = torch.ones(1, frames, device="meta", dtype=torch.bool)
        t = torch.zeros((), device="meta")
        # streaming=True: its chunk mask is built without reading the (meta) padding mask; the traffic is the same
        _, dit_moved = _linear_and_conv_traffic(dit, lambda: dit(x, mask, x, t, x[:, :, 0], x, True))
    mel = torch.zeros(1, config.hift.in_channels, frames, device="meta")
    stft_frames = frames * config.hift.samples_per_frame // config.hift.istft_hop_len + 1
    source = torch.zeros(1, config.hift.istft_n_fft + 2, stft_frames, device="meta")
    hift_flops, hift_moved = _linear_and_conv_traffic(hift, lambda: (hift.predict_f0(mel), hift.decode(mel, source)))
    costs = ModelCosts(
        layers=qwen.num_hidden_layers,
        heads=qwen.num_attention_heads,
        kv_heads=qwen.num_key_value_heads,
        head_dim=qwen.head_dim,
        lm_weight_bytes=lm_weights,
        lm_flops_per_token=lm_weights,  # bfloat16: 2 bytes and 2 FLOPs per weight
        lm_activation_bytes_per_token=sum(2 * (m.in_features + m.out_features) for m in linears),
        dit_weight_bytes=sum(p.numel() * p.element_size() for p in dit.parameters()),
        dit_activation_bytes_per_frame=dit_moved / frames,
        solver_steps=config.flow.n_timesteps,
        hift_weight_bytes=sum(p.numel() * p.element_size() for p in hift.parameters()),
        hift_flops_per_frame=hift_flops / frames,
        hift_activation_bytes_per_frame=hift_moved / frames,
    )
    return costs, dit


def stage_work(costs: ModelCosts, dit: DiT | CausalUNet, row: Row, batch: int) -> dict[str, Work]:
    """Each stage's work for `batch` copies of `row`: the weights are read once per batch (per step), the rest per row.

    Decode is counted at the mean context length (prefix + half the generated tokens); its cost is linear in it."""
    c = costs
    prefix, generated = row.prefix_tokens, row.speech_tokens
    context = prefix + generated / 2
    attention_per_token = 4 * c.layers * c.heads * c.head_dim  # q.k and p.v, per key
    per_token_bytes = c.lm_activation_bytes_per_token + c.kv_bytes_per_token
    prefill = Work(
        batch * (prefix * c.lm_flops_per_token + attention_per_token * prefix * prefix / 2),  # causal: half the keys
        c.lm_weight_bytes + batch * prefix * per_token_bytes,
        "bf16",
    )
    decode = Work(
        generated * batch * (c.lm_flops_per_token + attention_per_token * context),
        generated * (c.lm_weight_bytes + batch * (c.lm_activation_bytes_per_token + c.kv_bytes_per_token * context)),
        "bf16",
    )
    frames = row.flow_frames
    flow = Work(
        c.solver_steps * dit.flops(frames, CFG_BATCH * batch),
        c.solver_steps * (c.dit_weight_bytes + CFG_BATCH * batch * frames * c.dit_activation_bytes_per_frame),
        "bf16",
    )
    mel_frames = row.token_mel_ratio * generated
    vocoder = Work(
        batch * mel_frames * c.hift_flops_per_frame,
        c.hift_weight_bytes + batch * mel_frames * c.hift_activation_bytes_per_frame,
        "tf32",
    )
    return {"llm_prefill": prefill, "llm_decode": decode, "flow": flow, "vocoder": vocoder}


def lever(stage: str, bound: str, row: Row, gpu: GPU) -> str:
    """What would move a stage that bounds a projection."""
    if stage == "flow" and bound == "compute":
        prompt_share = row.prompt_speech_tokens / (row.prompt_speech_tokens + row.speech_tokens)
        return (
            f"estimator FLOPs: {prompt_share:.0%} of its frames are the prompt's, recomputed at all 10 steps x CFG 2; "
            "FP8 tensor cores (2x; not on A100); fewer steps or no CFG would change the audio"
        )
    if stage == "flow":
        return "more rows per estimator call: its weights are read again at each of the 10 steps"
    if stage == "llm_decode" and bound == "memory":
        ridge = round(gpu.bf16_flops / gpu.bandwidth)
        return (
            f"more rows per decode step (weights are read once per step for all rows; compute-bound from about "
            f"{ridge} rows); FP8/INT8 weights halve the bytes"
        )
    if stage == "llm_decode":
        return "FP8 tensor cores, or fewer decode steps per second of audio (the 25 Hz token rate is fixed)"
    if stage == "llm_prefill":
        return "more rows per prefill" if bound == "memory" else "a shorter prompt (fewer prefix tokens)"
    return "the conv stack in bfloat16 (2x the TF32 peak)" if bound == "compute" else "fused Snake activations"


def project(costs: ModelCosts, dit: DiT | CausalUNet, row: Row, gpu: GPU, batch: int) -> dict:
    """One GPU, one batch size: per-stage time and bound, total, RTF, and what bounds it."""
    stages = {}
    for name, work in stage_work(costs, dit, row, batch).items():
        seconds, bound = work.seconds(gpu)
        stages[name] = {**asdict(work), "seconds": seconds, "bound": bound}
    total = sum(s["seconds"] for s in stages.values())
    audio = batch * row.audio_seconds
    worst = max(stages, key=lambda name: stages[name]["seconds"])
    return {
        "gpu": gpu.name,
        "batch": batch,
        "row": row.name,
        "stages": stages,
        "seconds": total,
        "audio_seconds": audio,
        "rtf": total / audio,
        "bounded_by": f"{worst} ({stages[worst]['bound']})",
        "lever": lever(worst, stages[worst]["bound"], row, gpu),
    }


def markdown(projections: list[dict], row: Row) -> list[str]:
    """The projection table of one row."""
    out = [
        f"Row: {row.name}: {row.prompt_speech_tokens} prompt speech tokens, prefix {row.prefix_tokens:.0f} tokens, "
        f"{row.speech_tokens:.1f} speech tokens generated ({row.audio_seconds:.2f} s of audio, "
        f"{row.flow_frames:.0f} estimator frames)",
        "",
        "| GPU | batch | LLM prefill ms | LLM decode ms | flow ms | vocoder ms | total ms | RTF | bounded by | "
        "what would move it |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in projections:
        if p["row"] != row.name:
            continue
        cells = [f"{p['stages'][s]['seconds'] * 1e3:.2f} ({p['stages'][s]['bound'][:3]})" for s in STAGES]
        out.append(
            f"| {p['gpu']} | {p['batch']} | {' | '.join(cells)} | {p['seconds'] * 1e3:.1f} | {p['rtf']:.4f} | "
            f"{p['bounded_by']} | {p['lever']} |"
        )
    return out


def summary(projections: list[dict], rows: list[Row]) -> list[str]:
    """Projected RTF per GPU and batch for every row, with the stage that bounds it."""
    header = " | ".join(f"RTF, {row.name.split(' (')[0]} | bounded by" for row in rows)
    out = [f"| GPU | batch | {header} |", "|---|---|" + "---|---|" * len(rows)]
    by_key = {(p["gpu"], p["batch"], p["row"]): p for p in projections}
    for gpu, batch in dict.fromkeys((p["gpu"], p["batch"]) for p in projections):
        cells = [by_key[(gpu, batch, row.name)] for row in rows]
        out.append(f"| {gpu} | {batch} | " + " | ".join(f"{p['rtf']:.4f} | {p['bounded_by']}" for p in cells) + " |")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--e2e", type=Path, default=E2E_RESULTS, help="bench_e2e results giving the typical row")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16, 32])
    parser.add_argument("--long-row-tokens", type=int, default=250, help="speech tokens of the second, longer row")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "roofline-projection.json")
    parser.add_argument("--family", default="cosyvoice3", choices=["cosyvoice3", "cosyvoice2"])
    args = parser.parse_args(argv)
    costs, dit = model_costs(args.family)
    typical = e2e_row(args.e2e)
    long_row = Row(
        f"{args.long_row_tokens / 25:.0f} s row (same prompt)",
        typical.prompt_speech_tokens,
        typical.prompt_text_tokens,
        text_tokens=args.long_row_tokens / 10,  # about 10 speech tokens per text token
        speech_tokens=args.long_row_tokens,
    )
    rows = [typical, long_row]
    projections = [project(costs, dit, row, gpu, b) for row in rows for gpu in GPUS for b in args.batch_sizes]
    result = {
        "label": LABEL,
        "model": f"{args.family} full size (voiceclone.loading.demo.model_config('full', {args.family!r})), counted "
        "on the meta device",
        "dtypes": {"llm": "bfloat16", "flow": "bfloat16", "vocoder": "float32 convs on TF32 tensor cores"},
        "costs": asdict(costs),
        "rows": [{**asdict(r), "prefix_tokens": r.prefix_tokens, "audio_seconds": r.audio_seconds} for r in rows],
        "gpus": [asdict(g) for g in GPUS],
        "published": list(PUBLISHED),
        "projections": projections,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{LABEL}.\n")
    print("\n".join(summary(projections, rows)) + "\n")
    for row in rows:
        print("\n".join(markdown(projections, row)) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
