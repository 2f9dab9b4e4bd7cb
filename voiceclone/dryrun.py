"""`synth --dry-run`: every check a run makes before it loads the model, and what it would do, without loading or
writing anything. Imports torch only when the device question needs it (see `runtime_names`), or to find (or build)
the demo model for `--resume`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from voiceclone.errors import ModelError
from voiceclone.io.manifest import Row
from voiceclone.loading import layout
from voiceclone.loading.families import demo_family
from voiceclone.outdir import existing_outputs, run_files
from voiceclone.synth import SynthOptions, check_out, dtype_label, plan_run

GPU_DRIVER_FILES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
FLOAT32_DTYPES = {"llm": "float32", "flow": "float32", "vocoder": "float32"}  # StageDtypes().names(), without torch


def _gpu_driver_present() -> bool:
    """Whether this machine may have a usable GPU (a GPU driver's files exist; always True off Linux)."""
    return not sys.platform.startswith("linux") or any(os.path.exists(path) for path in GPU_DRIVER_FILES)


def runtime_names(opts: SynthOptions) -> tuple[str, dict[str, str]]:
    """The device and each network's dtype a run would use, as names. With the CPU defaults on a Linux machine without
    a GPU driver the answer is known without torch (whose CUDA needs that driver); otherwise torch decides, as in the
    run."""
    on_cpu = opts.device == "cpu" or (opts.device == "auto" and not _gpu_driver_present())
    if on_cpu and opts.dtype in ("auto", "float32") and opts.attention in ("auto", "math"):
        return "cpu", dict(FLOAT32_DTYPES)
    from voiceclone.engine import runtime

    rt = runtime.resolve_runtime(opts.device, opts.dtype, opts.attention, opts.compile)
    return str(rt.device), rt.dtypes.names()


def check_model_folder(model_dir: Path, llm_file: str) -> None:
    """The dry run's model check, without reading weights: a known family, every file there, and weight files whose
    container is whole (ModelError otherwise)."""
    model_dir = layout.existing_dir(model_dir)
    converted = layout.is_converted(model_dir)
    layout.check_files(model_dir, layout.model_files(model_dir, llm_file))
    if converted:
        layout.read_converted_json(model_dir / layout.CONVERTED_CONFIG)
    for file in layout.network_files(converted, llm_file).values():
        problem = layout.weight_file_problem(model_dir / file)
        if problem:
            raise ModelError(f"{model_dir}: {problem}")


def dry_run(rows: list[Row], opts: SynthOptions) -> str:
    """Every check a run makes before it loads the model (flags, device, existing outputs, the model folder's files),
    and with `--resume` which rows it would keep; returns the one-line summary."""
    from voiceclone.loading import hub

    whole = opts.subset.select(rows)
    chosen = opts.shard.select(whole) if opts.shard is not None else whole
    device, dtypes = runtime_names(opts)
    check_out(chosen, whole, opts)
    model, model_dir = opts.model, None
    if opts.allow_download and hub.is_hub_id(model) and hub.find_cached(model) is None:
        model += " (in no local cache: the run downloads it)"
    elif demo_family(model) is None:
        model_dir = hub.model_dir(model)
        check_model_folder(model_dir, opts.llm_file)
    prompts = {row.prompt_audio for row in chosen}
    seeded = sum(row.seed is not None for row in chosen)
    refs = sum(row.reference_audio is not None for row in chosen)
    subset = f", {len(whole)} chosen by --limit/--ids" if opts.subset.given else ""
    subset += f", {len(chosen)} in shard {opts.shard.label}" if opts.shard is not None else ""
    line = (
        f"dry run: {len(rows)} rows valid{subset} ({len(prompts)} distinct prompts, {seeded} with an explicit seed, "
        f"{refs} with reference audio); model {model}; device {device}, dtype {dtype_label(opts.dtype, dtypes)} "
        f"({', '.join(f'{k} {v}' for k, v in dtypes.items())}); "
    )
    if not opts.resume:
        found = existing_outputs(opts.out, chosen, run_files(opts.out, opts.shard))
        return line + f"{len(found)} existing outputs in {opts.out}"
    if model_dir is None and demo_family(model) is not None:
        from voiceclone.loading.load import resolve_model

        model_dir = resolve_model(model)
    if model_dir is None:
        return line + f"--resume: 0 rows kept (the model is not here yet), {len(chosen)} to make"
    plan = plan_run(chosen, opts, model_dir, dtypes)
    return line + f"--resume: {len(plan.kept)} rows kept, {len(plan.todo)} to make"
