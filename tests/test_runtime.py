"""Device / dtype / attention resolution, the guarded compile, and peak memory."""

from __future__ import annotations

import pytest
import torch

from voiceclone.engine import cuda, runtime
from voiceclone.errors import DeviceError, UsageError
from voiceclone.models import attention

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour on a machine without CUDA")


@no_cuda
def test_auto_is_cpu_float32_without_cuda():
    rt = runtime.resolve_runtime("auto", "auto", "auto")
    assert rt.device == torch.device("cpu") and rt.dtype == torch.float32 and rt.attention == "auto"


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_missing_cuda_is_a_device_error(name):
    with pytest.raises(DeviceError, match="CUDA is not available") as info:
        runtime.resolve_device(name)
    assert info.value.exit_code == 4


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "mps"])
def test_unknown_device_is_a_usage_error(name):
    with pytest.raises(UsageError, match="--device"):
        runtime.resolve_device(name)


def test_cpu_dtypes():
    cpu = torch.device("cpu")
    assert runtime.resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert runtime.resolve_dtype("float32", cpu) == torch.float32
    with pytest.raises(UsageError, match="float16 needs a CUDA device"):
        runtime.resolve_dtype("float16", cpu)
    with pytest.raises(UsageError, match="unknown dtype"):
        runtime.resolve_dtype("fp8", cpu)


def test_attention_choice_is_validated_and_applied():
    with pytest.raises(UsageError, match="flash needs a CUDA device"):
        runtime.resolve_runtime("cpu", "float32", "flash")
    try:
        assert runtime.resolve_runtime("cpu", "float32", "math").attention == "math"
        assert attention.attention_backend() == "math"
    finally:
        attention.set_attention_backend("auto", torch.device("cpu"), torch.float32)


def test_guarded_compile_falls_back_to_eager_with_one_warning(monkeypatch, capsys):
    def broken_compile(fn, **kwargs):
        def fails(*args, **kw):
            raise RuntimeError("backend exploded\nsecond line")

        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    step = runtime.guarded_compile(lambda x: x * 2, "decode step")
    assert step(torch.tensor(3.0)).item() == 6.0
    assert step(torch.tensor(4.0)).item() == 8.0
    err = capsys.readouterr().err
    assert err.count("warning: --compile: decode step could not be compiled (backend exploded)") == 1


def test_threads_and_peak_memory():
    before = torch.get_num_threads()
    try:
        assert runtime.set_cpu_threads(1) == 1
        with pytest.raises(UsageError):
            runtime.set_cpu_threads(0)
    finally:
        torch.set_num_threads(before)
    assert runtime.set_cpu_threads(None) == before
    assert runtime.peak_memory_bytes(torch.device("cpu")) > 10 * 2**20
    assert cuda.is_out_of_memory(torch.OutOfMemoryError("x")) and not cuda.is_out_of_memory(RuntimeError("x"))


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bfloat16_warns_only_without_native_support(monkeypatch, capsys, native):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert runtime.resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert ("no native bfloat16 instructions" in capsys.readouterr().err) is not native
    runtime.resolve_dtype("float32", torch.device("cpu"))
    assert capsys.readouterr().err == ""
