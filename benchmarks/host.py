"""What a benchmark's numbers depend on, recorded beside them: CPU model and ISA, caches, clocks, thread placement,
library versions, in-cache GEMM rate per thread count, and the oneDNN kernels chosen for the shapes that matter.

Two hosts of one CPU kind can differ by 2x (the same bench_stages.py gave 214 and 145 GFLOP/s on two AVX-512 hosts):
two vCPUs that are SMT siblings of one core, another clock, smaller caches, a busy neighbour or another oneDNN kernel
each explain such a gap, and each shows here. Run alone to print the facts of this machine as JSON:

    python benchmarks/host.py
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from floors import best_seconds, memory_bandwidth

from voiceclone.models.linear import Linear, cpu_has_bf16_dot, cpu_has_native_bf16

CPU_SYS = Path("/sys/devices/system/cpu")
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "avx_vnni")
THREAD_ENV = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY",
    "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE", "LD_PRELOAD",
)  # fmt: skip
BF16_TARGETS = "flow in bfloat16 <= 1.25x its GEMM floor; --dtype mixed at batch 16 >= 2.5x float32 at batch 1"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_identity() -> dict:
    """Model name, vendor, family/model/stepping, hypervisor, the ISA flags that pick the kernels, torch's view."""
    info: dict = {"machine": platform.machine()}
    cpuinfo = _read(Path("/proc/cpuinfo")) or ""
    first = cpuinfo.split("\n\n")[0]
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    for key, name in (
        ("model name", "model"),
        ("vendor_id", "vendor"),
        ("cpu family", "family"),
        ("model", "model_id"),
    ):
        info[name] = fields.get(key)
    info["stepping"] = fields.get("stepping")
    flags = set(fields.get("flags", "").split())
    info["isa_flags"] = {flag: flag in flags for flag in ISA_FLAGS}
    info["hypervisor"] = "hypervisor" in flags
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["onednn_bf16_kernels"] = cpu_has_native_bf16()
    info["bf16_arithmetic"] = cpu_has_bf16_dot()
    return info


def caches() -> list[dict]:
    """Each cache level of CPU 0: level, type, size and which CPUs share it (from /sys)."""
    out = []
    for index in sorted((CPU_SYS / "cpu0" / "cache").glob("index*")):
        out.append({key: _read(index / key) for key in ("level", "type", "size", "shared_cpu_list")})
    return out


def clocks() -> dict:
    """The clock as the kernel reports it (cpufreq when exposed, else /proc/cpuinfo's "cpu MHz", which a VM may fix)."""
    freq = CPU_SYS / "cpu0" / "cpufreq"
    mhz = re.findall(r"cpu MHz\s*:\s*([\d.]+)", _read(Path("/proc/cpuinfo")) or "")
    return {
        "cpuinfo_MHz": sorted({float(m) for m in mhz}),
        "scaling_cur_kHz": _read(freq / "scaling_cur_freq"),
        "cpuinfo_max_kHz": _read(freq / "cpuinfo_max_freq"),
        "scaling_governor": _read(freq / "scaling_governor"),
    }


def threads() -> dict:
    """Threads torch uses, the CPUs this process may run on, their SMT siblings, where the worker threads last ran
    (after a parallel op), and the thread and library environment variables."""
    allowed = sorted(os.sched_getaffinity(0))
    siblings = {cpu: _read(CPU_SYS / f"cpu{cpu}" / "topology" / "thread_siblings_list") for cpu in allowed}
    cores = {_read(CPU_SYS / f"cpu{cpu}" / "topology" / "core_id") for cpu in allowed}
    a = torch.randn(1024, 1024)
    for _ in range(20):
        a @ a  # keep every OpenMP worker busy, then read where each thread last ran
    ran_on = []
    for task in Path("/proc/self/task").iterdir():
        stat = _read(task / "stat") or ""
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 36:
            ran_on.append(int(fields[36]))
    return {
        "torch_threads": torch.get_num_threads(),
        "os_cpu_count": os.cpu_count(),
        "affinity": allowed,
        "thread_siblings": siblings,
        "distinct_cores": len(cores),
        "threads_last_ran_on": sorted(ran_on),
        "env": {name: os.environ.get(name) for name in THREAD_ENV if os.environ.get(name) is not None},
        "loadavg": list(os.getloadavg()),
    }


def libraries() -> dict:
    """torch, oneDNN and MKL versions and the ATen parallel backend."""
    config = torch.__config__.show()
    onednn = re.search(r"(?:oneDNN|MKL-DNN) v([\d.]+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\w.-]+)", config)
    backend = re.search(r"ATen parallel backend: (\w+)", torch.__config__.parallel_info())
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onednn": onednn.group(1) if onednn else None,
        "mkl": mkl.group(1) if mkl else None,
        "parallel_backend": backend.group(1) if backend else None,
    }


def gemm_scaling(dtypes: list[torch.dtype], size: int = 512) -> dict:
    """GFLOP/s of an in-cache (size^3) matmul on 1 thread and on all of torch's threads: the ratio is ~N for N
    threads on N cores and ~1 when the threads share one core (SMT siblings) or a neighbour takes the others."""
    out = {}
    threads = torch.get_num_threads()
    for dtype in dtypes:
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        rates = {}
        for n in sorted({1, threads}):
            torch.set_num_threads(n)
            rates[f"{n}_threads"] = 2 * size**3 / best_seconds(lambda a=a, b=b: a @ b, torch.device("cpu"), 10) / 1e9
        torch.set_num_threads(threads)
        out[str(dtype).removeprefix("torch.")] = rates
    return out


def probe_onednn() -> None:
    """(Child process, ONEDNN_VERBOSE=1.) Run each representative op twice, each after a marker line on stdout."""
    cases = {"float32": torch.float32} | ({"bfloat16": torch.bfloat16} if cpu_has_native_bf16() else {})
    for name, dtype in cases.items():
        for label, rows, k, n in (("dit_linear", 400, 1024, 2048), ("decode_linear", 1, 896, 4864)):
            layer = Linear(k, n).to(dtype).eval().requires_grad_(False)
            x = torch.randn(rows, k).to(dtype)
            _run_marked(f"{label}_packed_{name}", lambda layer=layer, x=x: layer(x))
        a, b = torch.randn(400, 1024).to(dtype), torch.randn(1024, 2048).to(dtype)
        _run_marked(f"matmul_aten_{name}", lambda a=a, b=b: a @ b)
        conv = torch.nn.Conv1d(1024, 1024, 31, groups=16).to(dtype).eval().requires_grad_(False)
        h = torch.randn(2, 1024, 230).to(dtype)
        _run_marked(f"dit_conv_{name}", lambda conv=conv, h=h: conv(h))


def _run_marked(label: str, fn) -> None:
    print(f"@@case {label}", flush=True)
    fn()
    fn()
    sys.stdout.flush()


def onednn_kernels() -> dict:
    """The oneDNN ISA and, per representative op, the primitives oneDNN ran (kind, implementation, problem); an op
    with none ran outside oneDNN (ATen's own kernels or MKL)."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    command = [sys.executable, __file__, "--probe-onednn"]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    isa, cases, current = None, {}, None
    for line in done.stdout.splitlines():
        if line.startswith("@@case "):
            current = cases.setdefault(line.split(" ", 1)[1], [])
            continue
        parts = line.split(",")
        if len(parts) > 4 and parts[0] == "onednn_verbose" and parts[3].startswith("isa:"):
            isa = parts[3][4:]
        elif len(parts) > 12 and parts[2:4] == ["primitive", "exec"] and current is not None:
            kernel = {"kind": parts[5], "impl": parts[6], "problem": parts[11], "ms": float(parts[12] or 0)}
            if kernel not in current[-1:]:
                current.append(kernel)
    return {"isa": isa, "cases": cases}


def bf16_targets_note(device: torch.device) -> str | None:
    """Why the bfloat16 targets do not apply here (None where they do: CUDA, or a CPU with bfloat16 arithmetic)."""
    if device.type != "cpu" or cpu_has_bf16_dot():
        return None
    return (
        f"the bfloat16 targets ({BF16_TARGETS}) do not apply on this CPU: it has no bfloat16 arithmetic "
        f"(AVX512_BF16 or AMX; ISA here {torch.backends.cpu.get_cpu_capability()}), so bfloat16 is emulated or "
        "converted at float32's rate at best, and --dtype mixed runs float32"
    )


def host_facts(device: torch.device) -> dict:
    """Everything above for the CPU (with the copy bandwidth), or the GPU's name and capability."""
    facts: dict = {"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "libraries": libraries()}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["gpu_capability"] = list(torch.cuda.get_device_capability(device))
    dtypes = [torch.float32] + ([torch.bfloat16] if cpu_has_native_bf16() else [])
    facts |= {
        "cpu": cpu_identity(),
        "caches": caches(),
        "clocks": clocks(),
        "threads": threads(),
        "gemm_in_cache_GFLOPps": gemm_scaling(dtypes),
        "copy_bandwidth_GBps": memory_bandwidth(torch.device("cpu")) / 1e9,
        "onednn": onednn_kernels(),
        "bf16_targets_note": bf16_targets_note(device),
    }
    return facts


def warnings_for(facts: dict) -> list[str]:
    """Lines saying why this host's numbers may not be comparable: a busy machine or threads sharing cores."""
    lines = []
    t = facts["threads"]
    if t["loadavg"][0] > 0.5:
        lines.append(f"load average {t['loadavg'][0]:.1f} before the run: another process competes for the cores")
    if t["distinct_cores"] < min(t["torch_threads"], len(t["affinity"])):
        lines.append(
            f"{t['torch_threads']} threads on {t['distinct_cores']} physical core(s): SMT siblings share units"
        )
    return lines


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe-onednn"]:
        probe_onednn()
    else:
        print(json.dumps(host_facts(torch.device("cpu")), indent=1))
