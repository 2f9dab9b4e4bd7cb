"""torchrun: `torchrun --nproc-per-node N -m voiceclone synth ...` runs rank r of N as shard r/N of the rows (the
hash `--shard` uses) into the shared `--out`, on `cuda:LOCAL_RANK` when CUDA is there, else with cores / ranks CPU
threads. Rank 0 alone checks and clears `--out` (`--force`, temp files, journals) while the others wait for it; each
rank then plans `--resume` for its own rows (a row's files are only ever written by the rank that owns it) and writes
its own journal and shard report. At the end rank 0 waits for the others at a barrier and writes the one report, the
merge `merge-reports` does, with every rank's totals.

Coordination runs on a gloo group (the default group is nccl on GPUs; no tensor crosses ranks): a rank that dies
closes its connections, so the barrier fails at once and rank 0 writes the report of the rows that did finish, the
lost ones `skipped`, for `--resume` (under any N) to redo. A rank that hangs is given up after `RANK_TIMEOUT`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from voiceclone.errors import UsageError, VoiceCloneError
from voiceclone.io.manifest import Row
from voiceclone.io.report import ReportRow
from voiceclone.shards import Shard, merge, write_merged
from voiceclone.synth import Interrupted, SynthOptions, SynthOutcome, check_out, clear_out, run_synth

RANK_TIMEOUT = datetime.timedelta(hours=24)
LOST = "its rank stopped before this row finished; run again with --resume"


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun job: its rank, the world size, its rank and rank count on this machine."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_from_env(environ: Mapping[str, str] = os.environ) -> Launch | None:
    """The torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), or None outside torchrun or for a
    world of one process."""
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        local = int(environ.get("LOCAL_RANK", rank))
        local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
    except (KeyError, ValueError):
        return None
    return Launch(rank, world, local, local_world) if world > 1 else None


class RankStopped(VoiceCloneError):
    """A rank other than 0 stops with rank 0's error (rank 0 prints it)."""

    def __init__(self, exit_code: int):
        super().__init__("")
        self.exit_code = exit_code


def rank_options(opts: SynthOptions, launch: Launch, cuda_available: bool) -> SynthOptions:
    """The rank's shard, device (`cuda:LOCAL_RANK` for auto/cuda when CUDA is there) and CPU threads (cores / ranks
    on this machine unless --threads)."""
    if opts.shard is not None:
        raise UsageError("--shard and torchrun exclude each other: under torchrun each rank takes its shard")
    device = opts.device
    if device == "cuda" or (device == "auto" and cuda_available):
        device = f"cuda:{launch.local_rank}"
    threads = opts.threads
    if threads is None and not device.startswith("cuda"):
        threads = max(1, len(os.sched_getaffinity(0)) // launch.local_world_size)
    return replace(opts, shard=Shard(launch.rank, launch.world_size), owner=False, device=device, threads=threads)


def run_ranked(
    rows: list[Row],
    opts: SynthOptions,
    launch: Launch,
    on_start: Callable[[int, list[ReportRow]], None] = lambda total, kept: None,
    on_row: Callable[[ReportRow], None] = lambda row: None,
    on_model: Callable[[object], None] = lambda model: None,
) -> SynthOutcome:
    """Run this rank's shard; rank 0 returns the merged outcome of every rank, the others their own. Raises
    Interrupted (rank 0: after writing the merged report) on Ctrl-C or SIGTERM."""
    import torch.distributed as dist

    from voiceclone.engine import cuda

    mine = rank_options(opts, launch, cuda.is_available())
    gpu = mine.device.startswith("cuda")
    dist.init_process_group("nccl" if gpu else "gloo", timeout=RANK_TIMEOUT)
    group = dist.new_group(backend="gloo", timeout=RANK_TIMEOUT) if gpu else None
    try:
        return _run(rows, opts, mine, launch, group, on_start, on_row, on_model)
    finally:
        dist.destroy_process_group()


def _run(rows, whole: SynthOptions, mine: SynthOptions, launch: Launch, group, on_start, on_row, on_model):
    import torch.distributed as dist

    error = None
    if launch.rank == 0:
        try:
            chosen = whole.subset.select(rows)
            check_out(chosen, chosen, whole)
            clear_out(whole)
        except VoiceCloneError as e:
            error = e
    box = [None if error is None else error.exit_code]
    dist.broadcast_object_list(box, src=0, group=group)
    if error is not None:
        raise error
    if box[0] is not None:
        raise RankStopped(box[0])
    interrupted, outcome = False, None
    try:
        outcome = run_synth(rows, mine, on_start, on_row, on_model)
    except Interrupted as stop:
        interrupted, outcome = True, stop.outcome
    if not interrupted:
        with contextlib.suppress(RuntimeError):  # a rank died (its connection closed) or timed out
            dist.barrier(group=group)
    if launch.rank != 0:
        if interrupted:
            raise Interrupted(outcome)
        return outcome
    merged = merge(whole.out, whole.subset.select(rows), LOST)
    merged.summary["interrupted"] = interrupted or bool(merged.missing)
    write_merged(whole.out, merged)
    result = SynthOutcome(merged.rows, merged.summary)
    if interrupted:
        raise Interrupted(result)
    return result
