"""Where and how the networks run: `--device`, `--dtype`, `--attention`, `--compile`, CPU threads, peak memory.

Rules: `--device auto` is the first CUDA device when one is usable, else the CPU. `--dtype auto` is bfloat16 on a CUDA
device that supports it, float32 elsewhere (CPU, or a CUDA device without bfloat16). float16 needs CUDA: half
precision on the CPU is slower than float32 and the reference never runs it there, so it is refused with one line.
bfloat16 on a CPU where oneDNN has no bfloat16 kernels (neither AVX-512 nor AVX-NE-CONVERT, e.g. AVX2-only) runs,
emulated by ATen and far slower than float32, with one warning line. `--dtype mixed` is precision per stage: the LLM
in float32 (its tokens, and so the durations, are those of a float32 run at any batch size), the flow and the vocoder
in bfloat16 on a CPU with bfloat16 arithmetic (AVX512_BF16 or AMX) or on CUDA (float16 on a GPU without bfloat16);
on any other CPU it says so in one line and runs float32. The other values run the LLM and the flow in the dtype and the
vocoder in float32.
"""

from __future__ import annotations

import functools
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from voiceclone.engine import cuda
from voiceclone.errors import DeviceError, UsageError
from voiceclone.files import first_line
from voiceclone.models.attention import set_attention_backend
from voiceclone.models.linear import cpu_has_bf16_dot, cpu_has_native_bf16
from voiceclone.models.network import StageDtypes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = "auto, float32, bfloat16, float16 or mixed"


@dataclass(frozen=True)
class Runtime:
    """The resolved execution settings every stage uses."""

    device: torch.device
    dtypes: StageDtypes
    attention: str
    compile: bool

    @property
    def dtype(self) -> torch.dtype:
        """The LLM's dtype: the `--dtype` value except for `mixed` (float32); `dtypes` has the other stages'."""
        return self.dtypes.llm


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N`; a CUDA device that is not usable raises `DeviceError`."""
    if name == "auto":
        return torch.device("cuda", cuda.current_device()) if cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index_text = name.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise UsageError(f"--device: {name!r} is not cuda:N with a device number N")
        if not cuda.is_available():
            raise DeviceError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        index = int(index_text) if index_text else cuda.current_device()
        if index >= cuda.device_count():
            raise DeviceError(f"--device {name}: only {cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index)
    raise UsageError(f"--device: unknown device {name!r} (choose auto, cpu, cuda or cuda:N)")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`, `float32`, `bfloat16` or `float16` for `device` (see the module docstring for the rules)."""
    on_cuda = device.type == "cuda"
    bf16_ok = on_cuda and cuda.has_bf16()
    if name == "auto":
        return torch.bfloat16 if bf16_ok else torch.float32
    if name not in DTYPES:
        raise UsageError(f"--dtype: unknown dtype {name!r} (choose {DTYPE_CHOICES})")
    if name == "float16" and not on_cuda:
        raise UsageError("--dtype float16 needs a CUDA device; on the CPU use bfloat16 or float32")
    if name == "bfloat16" and on_cuda and not bf16_ok:
        raise DeviceError(f"--dtype bfloat16: {cuda.device_name(device)} has no bfloat16 support")
    if name == "bfloat16" and device.type == "cpu" and not cpu_has_native_bf16():
        print(
            "warning: --dtype bfloat16: this CPU has no native bfloat16 instructions; matmuls are emulated and run "
            "many times slower than float32",
            file=sys.stderr,
        )
    return DTYPES[name]


def resolve_dtypes(name: str, device: torch.device) -> StageDtypes:
    """Every stage's dtype for `--dtype name` on `device` (see the module docstring for `mixed`)."""
    if name != "mixed":
        return StageDtypes.of(resolve_dtype(name, device))
    if device.type == "cuda":
        half = torch.bfloat16 if cuda.has_bf16() else torch.float16
    elif cpu_has_bf16_dot():
        half = torch.bfloat16
    else:
        print(
            "note: --dtype mixed: this CPU has no bfloat16 arithmetic (AVX512_BF16 or AMX; without it bfloat16 is no "
            "faster than float32), so the flow and the vocoder run in float32 like the LLM",
            file=sys.stderr,
        )
        return StageDtypes()
    return StageDtypes(llm=torch.float32, flow=half, vocoder=half)


def resolve_runtime(
    device: str = "auto", dtype: str = "auto", attention: str = "auto", compile: bool = False
) -> Runtime:
    """Resolve and validate the four flags together; selects the process-wide attention backend."""
    dev = resolve_device(device)
    dtypes = resolve_dtypes(dtype, dev)
    set_attention_backend(attention, dev, dtypes.llm)
    return Runtime(device=dev, dtypes=dtypes, attention=attention, compile=compile)


def set_cpu_threads(threads: int | None) -> int:
    """Use `threads` intra-op CPU threads (None: leave torch's default); returns the count in effect."""
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def guarded_compile(fn: Callable, name: str) -> Callable:
    """`torch.compile(fn)`, falling back to `fn` with one warning line if compiling or the first call fails."""
    try:
        compiled = torch.compile(fn, dynamic=True)
    except Exception as exc:  # compile itself can fail on unsupported platforms
        _warn_eager(name, exc)
        return fn
    state = {"ok": None}

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if state["ok"] is False:
            return fn(*args, **kwargs)
        try:
            out = compiled(*args, **kwargs)
        except Exception as exc:
            if state["ok"]:
                raise
            state["ok"] = False
            _warn_eager(name, exc)
            return fn(*args, **kwargs)
        state["ok"] = True
        return out

    return call


def compile_model(model) -> None:
    """`--compile`: compile the LM backbone (prefill and decode step) and the flow estimator in place, guarded."""
    model.lm.llm.forward = guarded_compile(model.lm.llm.forward, "LM decode step")
    model.flow.estimator.forward = guarded_compile(model.flow.estimator.forward, "flow estimator")


def _warn_eager(name: str, exc: Exception) -> None:
    print(
        f"warning: --compile: {name} could not be compiled ({first_line(exc)[:160]}); running it eagerly",
        file=sys.stderr,
    )


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA only; the CPU figure is the process lifetime peak RSS)."""
    if device.type == "cuda":
        cuda.reset_peak_memory(device)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: max memory allocated since the last reset; CPU: peak resident set size of this process."""
    if device.type == "cuda":
        return cuda.peak_memory_bytes(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)
