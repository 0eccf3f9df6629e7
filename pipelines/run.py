"""Run a pipeline job: validate everything, plan against the output's progress, execute, summarise.

Every check that can fail on user input (config, inputs, output, an output made by another
config) runs before Ray starts, so such mistakes cost a one-line error and no work.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel

from .. import __version__, storage
from ..operators.checkpoints import CheckpointError
from .config import ConfigError, config_hash, load_config
from .inputs import InputError, Unit
from .runtime import io_concurrency, start_ray
from .summary import build_summary
from .writer import SUCCESS, OutputConflict, ShardSink, read_progress, remove_orphans, write_success

log = logging.getLogger("pairmine")
USER_ERRORS = (ConfigError, InputError, storage.StorageError, OutputConflict, CheckpointError)


@dataclass(frozen=True)
class Job:
    """What a pipeline contributes to a run; the runner does the rest."""

    name: str
    config_model: type[BaseModel]
    discover: Callable[[list[str]], list[Unit]]
    build: Callable  # (pending units, Progress, config, config hash) -> Ray Dataset of writer rows, or None
    rows_per_shard: Callable[[BaseModel], int]  # writer rows (groups) that fill about one shard
    check: Callable[[BaseModel], None] = lambda config: None  # config checks beyond validation (model files)


def verify_model_stage(params) -> None:
    """Before Ray starts: the stage's files exist (a quick one-line error) and its weights load into
    its architecture, here on the CPU with the actors' own loader (a mismatch is a one-line error
    naming the path and the model, instead of an actor dying inside the run)."""
    params.check_files()
    params.model_copy(update={"device": "cpu"}).build()


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + secrets.token_hex(2)


def prepare(job: Job, inputs: list[str], output: str, config_path: str | None, overrides: list[str]):
    """All user-facing checks: returns (config, hash, units, progress, pending units)."""
    config = load_config(job.config_model, config_path, overrides)
    job.check(config)
    digest = config_hash(config)
    if not inputs:
        raise InputError("no --input given")
    units = job.discover(inputs)
    storage.check_writable(output)
    progress = read_progress(output, job.name, digest)
    pending = [u for u in units if u.name not in progress.complete_units]
    return config, digest, units, progress, pending


def run(job: Job, inputs: list[str], output: str, config_path: str | None = None, overrides: list[str] = (), progress_bars: bool = True) -> dict:
    config, digest, units, progress, pending = prepare(job, inputs, output, config_path, overrides)
    log.info("%s: %d input units, %d already complete in %s, config %s", job.name, len(units), len(units) - len(pending), output, digest[:12])
    storage.delete(storage.join(output, SUCCESS))
    removed = remove_orphans(output)
    if removed:
        log.info("removed %d files of an interrupted earlier run", removed)
    run_id = new_run_id()
    started = time.perf_counter()
    results: list[dict] = []
    resources = {}
    if pending:
        resources = start_ray(config.ray, progress_bars)
        dataset = job.build(pending, progress, config, digest)
        if dataset is not None:
            sink = ShardSink(output, job.name, run_id, digest, __version__, config.shards, job.rows_per_shard(config))
            # The write is I/O-bound: it reserves no CPU, which also keeps it from fusing with the
            # compute before it (that would run a whole shard's groups serially in the write task).
            dataset.write_datasink(sink, ray_remote_args={"num_cpus": 0}, concurrency=io_concurrency())
            results = sink.results
    wall = time.perf_counter() - started
    summary = build_summary(
        results,
        wall,
        pipeline=job.name,
        run=run_id,
        version=__version__,
        config_hash=digest,
        config=config.model_dump(mode="json"),
        output=output,
        inputs=list(inputs),
        units={"given": len(units), "planned": len(pending), "already_complete": len(units) - len(pending)},
        cluster={k: resources.get(k) for k in ("CPU", "GPU")},
    )
    written = summary["written"]  # what earlier runs committed plus this run's shards: no second manifest read
    summary["output_totals"] = {"shards": progress.shards + written["shards"], "samples": progress.samples + written["samples"]}
    write_success(output, summary)
    return summary


def plan_only(job: Job, inputs: list[str], output: str, config_path: str | None, overrides: list[str]) -> dict:
    """What a run would do (``--dry-run``), after the same checks."""
    config, digest, units, progress, pending = prepare(job, inputs, output, config_path, overrides)
    return {
        "pipeline": job.name,
        "config_hash": digest,
        "units": [{"name": u.name, "kind": u.kind, "uri": u.uri, "done": u.name in progress.complete_units,
                   "ids_done": len(progress.consumed.get(u.name, ()))} for u in units],
        "output_totals": {"shards": progress.shards, "samples": progress.samples},
    }

