"""`synth --backend ray`: the rows left to make become a Ray dataset; `map_batches` with an actor class runs the same
engine (one model per actor, `--gpus-per-worker` GPUs each, batches of `--batch-size` rows). The actors write each wav
atomically into `--out`, which must be a path every node sees; the driver checks and plans `--out` as a plain run
does, streams the actors' report rows into the one journal and writes the one report. Ray retries failed tasks and
restarts dead actors: a retried batch rewrites the same files (the same bytes on the CPU), and a row that comes back
twice is kept once. Ray is an optional extra: without it `--backend ray` exits 2 with one line.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from voiceclone.errors import UsageError
from voiceclone.io.manifest import Row
from voiceclone.io.report import JOURNAL, Journal, ReportRow, row_json
from voiceclone.outdir import remove_temp_files
from voiceclone.synth import SynthOptions, SynthOutcome, check_out, clear_out, finish_run, plan_run, report_row

INSTALL = "--backend ray needs Ray: pip install 'voiceclone[ray]' (or pip install 'ray[data]==2.60.0')"
COLUMNS = ("id", "prompt_audio", "prompt_text", "target_text", "seed", "prompt_sha256", "fingerprint")


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: a cluster address (None: a local cluster, or the one `ray.init` already joined), the
    number of actors, and GPUs per actor (0: CPU actors with `--threads` CPUs each, default 1)."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise UsageError(f"--gpus-per-worker must not be negative, got {self.gpus_per_worker}")


def import_ray():
    """The `ray` module with `ray.data`; UsageError with the install command when the extra is absent."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL) from None
    return ray


def worker_dtypes(device: str, dtype: str, attention: str) -> dict[str, str]:
    """The dtype of each network on a worker (run on one, so a GPU worker answers for GPUs)."""
    from voiceclone.engine import runtime

    return runtime.resolve_runtime(device, dtype, attention, False).dtypes.names()


class SynthActor:
    """One Ray actor: loads the model once, runs each batch of rows through the engine and writes their wavs; returns
    the rows' report entries as JSON lines."""

    def __init__(self, opts: SynthOptions, model_dir: str):
        from voiceclone.engine import engine, runtime
        from voiceclone.loading import load

        rt = runtime.resolve_runtime(opts.device, opts.dtype, opts.attention, opts.compile)
        runtime.set_cpu_threads(opts.threads)
        model = load.load_model(Path(model_dir), rt.device, rt.dtypes, opts.llm_file)
        if rt.compile:
            runtime.compile_model(model)
        settings = engine.EngineSettings(
            batch_size=opts.batch_size, max_batch_tokens=opts.max_batch_tokens, text_frontend=opts.text_frontend
        )
        self.engine, self.opts, self.dtypes = engine.Engine(model, settings), opts, rt.dtypes.names()

    def __call__(self, batch: dict) -> dict:
        rows = [
            Row(i, Path(audio), prompt, target, seed=int(seed), prompt_sha256=digest)
            for i, audio, prompt, target, seed, digest in zip(*(batch[c] for c in COLUMNS[:6]), strict=True)
        ]
        fingerprints = dict(zip(batch["id"], batch["fingerprint"], strict=True))
        seeds = {row.id: row.seed for row in rows}
        entries = []
        for result in self.engine.run(rows):
            entry = report_row(
                result, seeds[result.id], fingerprints[result.id], self.opts.out, self.opts.wav_format, self.dtypes
            )
            entries.append(row_json(entry))
        return {"entry": entries}


def row_fields(row: Row) -> tuple:
    """A resolved row as the dataset's first six columns."""
    return (row.id, str(row.prompt_audio), row.prompt_text, row.target_text, row.seed, row.prompt_sha256)


def run_ray(
    rows: list[Row],
    opts: SynthOptions,
    ray_opts: RayOptions,
    on_start: Callable[[int, list[ReportRow]], None] = lambda total, kept: None,
    on_row: Callable[[ReportRow], None] = lambda row: None,
) -> SynthOutcome:
    """`run_synth` with the rows made by Ray actors; raises Interrupted on Ctrl-C after writing the report."""
    ray = import_ray()
    from voiceclone.loading import config as model_config
    from voiceclone.loading import load

    if opts.shard is not None:
        raise UsageError("--shard and --backend ray exclude each other: Ray spreads the rows itself")
    started = time.perf_counter()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    chosen = opts.subset.select(rows)
    check_out(chosen, chosen, opts)
    model_dir = load.resolve_model(opts.model, allow_download=opts.allow_download)
    if not ray.is_initialized():
        ray.init(address=ray_opts.address, log_to_driver=False, configure_logging=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our progress line speaks for the run, not Ray's INFO
    cpus = 0 if ray_opts.gpus_per_worker else (opts.threads or 1)
    probe = ray.remote(num_cpus=cpus, num_gpus=ray_opts.gpus_per_worker)(worker_dtypes)
    dtypes = ray.get(probe.remote(opts.device, opts.dtype, opts.attention))
    plan = plan_run(chosen, opts, model_dir, dtypes)
    config = model_config.read_config(model_dir, opts.llm_file)
    clear_out(opts)
    for row in plan.todo:
        (opts.out / f"{row.id}.wav").unlink(missing_ok=True)
    done = dict(plan.kept)
    on_start(len(plan.rows), list(plan.kept.values()))
    interrupted = False
    journal = Journal(opts.out / JOURNAL)
    try:
        if plan.todo:
            items = [dict(zip(COLUMNS, (*row_fields(r), plan.fingerprints[r.id]), strict=True)) for r in plan.todo]
            dataset = ray.data.from_items(items).map_batches(
                SynthActor,
                fn_constructor_kwargs={"opts": opts, "model_dir": str(model_dir)},
                batch_size=opts.batch_size,
                compute=ray.data.ActorPoolStrategy(size=ray_opts.workers),
                num_cpus=cpus,
                num_gpus=ray_opts.gpus_per_worker,
            )
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for line in batch["entry"]:
                    entry = ReportRow.from_dict(json.loads(line))
                    if entry.id in done:
                        continue  # a retried batch: the row is already in the journal
                    journal.append(entry)
                    done[entry.id] = entry
                    on_row(entry)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        journal.close()
        remove_temp_files(opts.out)
    each = f"{ray_opts.gpus_per_worker} GPU" if ray_opts.gpus_per_worker else f"{cpus} CPU"
    facts = {
        "sample_rate": config.sample_rate,
        "token_frame_rate": config.token_frame_rate,
        "device": f"ray: {ray_opts.workers} actors x {each}",
        "dtypes": dtypes,
        "threads": None if ray_opts.gpus_per_worker else cpus,
        "peak_memory_bytes": None,
        "world_size": ray_opts.workers,
    }
    return finish_run((len(rows), len(chosen)), opts, plan, done, facts, (started, started_at), interrupted)
