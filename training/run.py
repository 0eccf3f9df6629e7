"""Run a training job: check everything, plan the stream, start Ray Train, summarise.

The run lives in ``<storage>/<name>/`` (local or s3://): Ray Train's checkpoints, and ours beside them:
``config.json`` (the config and its hash; a rerun with another hash is refused), ``progress.json``
(step, stream position and folder of the latest checkpoint, written once it is uploaded: a rerun starts
there even if Ray did not record it), ``metrics/`` and ``summary.json``. Rerunning the same command
resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time

import pyarrow.fs as pafs

from .. import __version__, dataset, logs, storage
from ..errors import UserError
from ..pipelines.config import changes_note, config_hash, load_config
from .config import TrainParams, with_absolute_paths
from .data import Preparation, plan_stream, shard_stream, validation_samples
from .metrics import (PROGRESS_FILE, REPORT_FILE, STATE_FILE, checkpoint_step, loss_summary, read_progress, read_step_metrics,
                      read_validation, remove_metrics_after)

log = logging.getLogger("pairmine")
CONFIG_FILE, SUMMARY_FILE, DATA_FILE = "config.json", "summary.json", "data.json"
SLACK = 1.05  # extra stream rows per needed row: micro-steps whose rows are all skipped are not steps
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of its checkpoints in the run folder


class TrainingError(UserError):
    """A training run that cannot start as configured; the message is one line."""


class TrainingFailed(UserError):
    """A run that started and could not finish (its workers failed, its data ran out); one line, exit 1."""

    exit_code = 1


def run_uri(params: TrainParams) -> str:
    return storage.join(params.storage, params.name)


def _sources(params: TrainParams) -> list[tuple[float, list[dataset.Shard]]]:
    found = []
    for source in params.data.sources:
        try:
            storage.check_readable(source.output)
        except storage.StorageError as exc:
            raise TrainingError(f"data.sources: {exc}") from None
        shards = dataset.committed_shards(source.output)
        if not shards:
            raise TrainingError(f"data.sources: {source.output} has no committed shards (is it a pipeline output?)")
        if not storage.exists(storage.join(source.output, dataset.SUCCESS)):
            log.warning("%s has no %s (a pipeline run is writing it, or one was stopped): training reads the %d shards committed so far",
                        source.output, dataset.SUCCESS, len(shards))
        found.append((source.weight, shards))
    return found


def _pinned(uri: str, sources: list[tuple[float, list[dataset.Shard]]]) -> list[tuple[float, list[dataset.Shard]]]:
    """The shards the run at `uri` started on (its DATA_FILE), or `sources` for a new run. A resumed run reads the
    stream it started on: shards committed since would renumber its stream positions (the samples it already
    trained on and those it has yet to see), so they are left to a new run; a shard gone or rewritten since ends it."""
    saved = storage.read_json(storage.join(uri, DATA_FILE))
    if not saved:
        return sources
    now = {shard.uri: shard for _, shards in sources for shard in shards}
    pinned = []
    for (weight, _), started in zip(sources, saved["sources"]):
        shards = []
        for entry in started["shards"]:
            shard = now.get(storage.absolute(entry["uri"]))  # recorded as written by runs before paths were made absolute
            if shard is None or shard.sha256 != entry["sha256"]:
                raise TrainingError(f"{uri} started on {entry['uri']}, which is {'gone' if shard is None else 'rewritten'} since: "
                                    "it cannot resume on the same data; start a new run with --set name=...")
            shards.append(shard)
        pinned.append((weight, shards))
    added = len(now) - sum(len(shards) for _, shards in pinned)
    if added:
        log.info("%d shard(s) committed since %s started are left out: a resumed run reads the data it started on (%s); "
                 "a new run (--set name=...) trains on them", added, uri, DATA_FILE)
    return pinned


def _data_record(params: TrainParams, sources: list[tuple[float, list[dataset.Shard]]]) -> bytes:
    """DATA_FILE: which shards (and versions of them) a run trains on, per source."""
    return json.dumps({"sources": [
        {"output": source.output, "weight": weight, "shards": [{"uri": s.uri, "sha256": s.sha256, "samples": s.samples} for s in shards]}
        for source, (weight, shards) in zip(params.data.sources, sources)
    ]}, indent=1).encode()


def prepare(config_path: str | None, overrides: list[str]) -> dict:
    """All checks that can fail on user input, before Ray starts; returns the plan of the run."""
    written = load_config(TrainParams, config_path, overrides)
    digest = config_hash(written)  # over the paths as written: the same config hashes the same from any folder
    params = with_absolute_paths(written)
    from . import models  # torch and the model libraries: the checks read their configs

    models.check(params.eraser)
    uri = run_uri(params)
    storage.check_writable(params.storage, create=False)
    saved = storage.read_json(storage.join(uri, CONFIG_FILE))
    if saved and saved.get("config_hash") != digest:
        raise TrainingError(f"{uri} holds a run made with config {saved.get('config_hash', '?')[:12]} (this one: {digest[:12]}"
                            f"{changes_note(saved.get('config') or {}, written)}); "
                            f"resume it with its own config, or start a new run with --set name=...")
    progress = _resume_point(uri)
    remaining = max(0, params.max_steps - progress["step"])
    if remaining and not _ray_known(params):  # an embedded Ray's CPUs are known before it starts
        from ..pipelines.runtime import embedded_cpus

        _check_resources(params, embedded_cpus(params.ray.num_cpus), None)
    sources = _sources(params)
    if remaining:  # a finished run's rerun only shows its summary, whatever its shards became since
        sources = _pinned(uri, sources)
    scaling = params.scaling
    rows_per_step = params.batch_size * scaling.num_workers * params.grad_accumulation
    needed = math.ceil(remaining * rows_per_step * SLACK) + rows_per_step
    try:
        stream = plan_stream(sources, params.seed, params.data.val_fraction, needed, start=progress["position"])
    except ValueError as exc:
        raise TrainingError(f"data.sources: {exc}") from None
    return {"params": params, "config": written.model_dump(mode="json"), "config_hash": digest, "run_uri": uri, "progress": progress,
            "sources": sources, "stream": stream}


def _ray_known(params: TrainParams) -> bool:
    """Whether the run joins a Ray that is not this command's to size: a cluster, or one this process started."""
    ray = sys.modules.get("ray")
    return bool(params.ray.address or os.environ.get("RAY_ADDRESS")) or (ray is not None and ray.is_initialized())


def _checkpoints(uri: str) -> list[tuple[int, str]]:
    """The run's step-named checkpoint folders, (step, uri), in step order."""
    return sorted((checkpoint_step(storage.basename(e.path)), storage.uri_of(uri, e)) for e in storage.list_dir(uri)
                  if e.type == pafs.FileType.Directory and checkpoint_step(storage.basename(e.path)) >= 0)


def _whole(folder: str) -> dict | None:
    """A checkpoint folder's report when its files are there (state, report, the eraser's description), else None."""
    from .eraser import ERASER_FILE  # torch: prepare has imported it already

    report = storage.read_json(storage.join(folder, REPORT_FILE))
    found = report and all(storage.exists(storage.join(folder, name)) for name in (STATE_FILE, f"eraser/{ERASER_FILE}"))
    return report if found else None


def _listed(uri: str) -> set[str]:
    """The checkpoint folders Ray's snapshot of the run lists."""
    snapshot = storage.read_json(storage.join(uri, RAY_SNAPSHOT)) or {}
    return {r.get("checkpoint_dir_name") for r in snapshot.get("checkpoint_results", []) if isinstance(r, dict)} - {None}


def _resume_point(uri: str) -> dict:
    """Where the run resumes: its progress.json, while the checkpoints it and Ray's snapshot name are there. When
    one is gone (a user removed it as damaged; or Ray pruned the one progress.json named before a kill kept it from
    naming the next): the newest whole checkpoint folder (its step and position from its report), or the start
    when there is none. Those carry ``fallback``: the run commits that point before it starts."""
    progress = read_progress(uri)
    named = _listed(uri) | ({progress["checkpoint"]} if progress.get("checkpoint") else set())
    gone = sorted(name for name in named if not storage.exists(storage.join(uri, name, STATE_FILE)))
    if not gone:
        return progress
    for step, folder in reversed(_checkpoints(uri)):
        if report := _whole(folder):
            log.warning("%s: checkpoint %s is gone: the run resumes from %s (step %d)", uri, ", ".join(gone), storage.basename(folder), step)
            return {"step": report["step"], "position": report["position"], "checkpoint": storage.basename(folder), "fallback": True}
    log.warning("%s: checkpoint %s is gone and no other is whole: the run starts over from the base weights", uri, ", ".join(gone))
    return {"step": 0, "position": 0, "fallback": True}


def _commit_resume_point(uri: str, progress: dict) -> None:
    """Make a fallback resume point the run's: checkpoint folders and metrics past it go (a half-removed folder would
    mix with the next one of its name; a stale metric line would outlive the rerun's), progress.json names it (none:
    removed), and Ray's snapshot goes (it lists a checkpoint that is gone, and Ray refuses to restore such a run;
    the workers start from progress.json's)."""
    step = progress["step"]
    for later, folder in _checkpoints(uri):
        if later > step:
            storage.delete_tree(folder)
    remove_metrics_after(uri, step)
    committed = {k: v for k, v in progress.items() if k != "fallback"}
    if committed.get("checkpoint"):
        storage.write_bytes(storage.join(uri, PROGRESS_FILE), json.dumps(committed).encode())
    else:
        storage.delete(storage.join(uri, PROGRESS_FILE))
    storage.delete(storage.join(uri, RAY_SNAPSHOT))


def plan_summary(plan: dict) -> dict:
    """What a run would do (``--dry-run``)."""
    params, stream = plan["params"], plan["stream"]
    return {
        "run": plan["run_uri"],
        "config_hash": plan["config_hash"],
        "resume_from": plan["progress"],
        "sources": [{"output": s.output, "weight": s.weight, "shards": len(shards), "samples": sum(x.samples for x in shards)}
                    for s, (_, shards) in zip(params.data.sources, plan["sources"])],
        "epoch_samples": stream.epoch_samples,
        "stream": {"start": stream.start, "stop": stream.stop, "passes": len(stream.passes)},
        "steps": {"max": params.max_steps, "remaining": max(0, params.max_steps - plan["progress"]["step"])},
    }


def _check_resources(params: TrainParams, cpus: float, gpus: float | None) -> None:
    """Training workers must leave CPUs to the data path: Ray Data gets only what they do not reserve. `gpus`:
    the cluster's (None: not known yet, unchecked)."""
    scaling = params.scaling
    reserved = 0.0 if scaling.use_gpu else scaling.num_workers * scaling.cpus_per_worker
    if reserved and reserved > cpus - min(1.0, cpus / 4):
        raise TrainingError(
            f"scaling: {scaling.num_workers} workers x {scaling.cpus_per_worker} CPU reserve {reserved:g} of the cluster's {cpus:g} CPUs "
            f"and the data path would starve (a deadlock); set scaling.cpus_per_worker to at most "
            f"{max(0.1, (cpus - min(1.0, cpus / 4)) / scaling.num_workers):.2g}"
        )
    if scaling.use_gpu and gpus is not None and gpus < scaling.num_workers:
        raise TrainingError(f"scaling: {scaling.num_workers} GPU workers asked for, the cluster has {gpus:g} GPUs")


def _storage_args(params: TrainParams) -> dict:
    if storage.is_s3(params.storage):
        return {"storage_path": storage.resolve(params.storage)[1], "storage_filesystem": storage.s3_filesystem()}
    return {"storage_path": storage.resolve(params.storage)[1]}


def train(config_path: str | None = None, overrides: list[str] = (), progress_bars: bool = True) -> dict:
    """Run (or resume) a training job; returns its summary (also written to ``<run>/summary.json``)."""
    import ray.train  # noqa: F401  Ray sets up its loggers when imported: run_log reroutes them

    plan = prepare(config_path, overrides)
    if plan["progress"]["step"] >= plan["params"].max_steps:  # a rerun of a finished run: its summary stands
        log.info("%s is complete (step %d of %d): nothing to do", plan["run_uri"], plan["progress"]["step"], plan["params"].max_steps)
        finished = storage.read_json(storage.join(plan["run_uri"], SUMMARY_FILE)) or _rebuilt_summary(plan)
        return finished | {"already_complete": True}
    with logs.run_log(plan["run_uri"], time.strftime("train-%Y%m%dT%H%M%SZ", time.gmtime())):
        return _train(plan, progress_bars)


def _train(plan: dict, progress_bars: bool) -> dict:
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig, WorkerGroupError
    from ray.train.torch import TorchTrainer

    from ..pipelines.progress import Display, new_board, read_board, train_lines
    from ..pipelines.runtime import io_concurrency, start_ray
    from .loop import train_loop

    params, stream, uri = plan["params"], plan["stream"], plan["run_uri"]
    started = time.perf_counter()
    cluster = start_ray(params.ray, progress_bars)
    _check_resources(params, float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0)))  # Ray leaves out a resource it has none of
    storage.check_writable(params.storage)
    if plan["progress"].get("fallback"):
        _commit_resume_point(uri, plan["progress"])
    storage.write_bytes(storage.join(uri, CONFIG_FILE), json.dumps(
        {"config_hash": plan["config_hash"], "version": __version__, "config": plan["config"]}, indent=2).encode())
    if not storage.exists(storage.join(uri, DATA_FILE)):
        storage.write_bytes(storage.join(uri, DATA_FILE), _data_record(params, plan["sources"]))
    prep = Preparation(params.data.resolution, params.eraser.object_crop_size(), params.data.max_zoom, params.data.mask_enhancement, params.seed)
    validation = validation_samples([s for _, shards in plan["sources"] for s in shards], params.data.val_fraction, params.data.val_samples, prep)
    log.info("training %s: %s, steps %d..%d, stream positions %d..%d (%d samples per epoch), %d validation samples",
             uri, params.eraser.name, plan["progress"]["step"], params.max_steps, stream.start, stream.stop, stream.epoch_samples, len(validation))
    board = new_board()
    rows = shard_stream(stream, params.seed, params.data.val_fraction, io_concurrency())
    from .data import decode_rows

    rows = rows.map_batches(decode_rows, fn_kwargs={"prep": prep}, batch_size=params.data.decode_batch, batch_format="numpy")
    scaling = params.scaling
    resources = {"CPU": 0 if scaling.use_gpu else scaling.cpus_per_worker} | ({"GPU": 1} if scaling.use_gpu else {})
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"params": params.model_dump(mode="json"), "run_uri": uri, "stream_start": stream.start, "validation": validation,
                           "progress": board},
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=params.name, failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=params.keep_checkpoints), **_storage_args(params),
        ),
        datasets={"train": rows},
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )
    interrupted, before = _noting_ctrl_c(trainer), signal.getsignal(signal.SIGINT)
    try:
        with Display(board, lambda state, elapsed: train_lines(state, elapsed, params.max_steps), enabled=progress_bars):
            result = trainer.fit()
    except BaseException as exc:
        if interrupted.is_set():  # Ray Train aborted the run for it and exited 1: the CLI says "stopped by Ctrl-C"
            raise KeyboardInterrupt from None
        if isinstance(exc, WorkerGroupError):
            failures = getattr(exc, "worker_failures", {}) or {}
            rank, error = next(iter(failures.items())) if failures else ("?", exc)
            raise TrainingFailed(f"training failed on worker {rank} after {scaling.max_failures} restarts: {storage.first_line(error)}") from None
        raise
    finally:
        signal.signal(signal.SIGINT, before)  # Ray Train's handler, left installed, would exit 0 on a later Ctrl-C
    if interrupted.is_set():
        raise KeyboardInterrupt
    _prune_checkpoints(uri, params.keep_checkpoints)
    value = result.return_value or {}
    failures = read_board(board, timeout=10).get("failures", [])
    for failure in failures:
        log.warning("training worker failed and the worker group was restarted from its last checkpoint: %s", failure)
    if value.get("steps", 0) < params.max_steps:
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(value.get("skipped", {}).items()) if reason != "valid") or "none"
        raise TrainingFailed(
            f"training stopped at step {value.get('steps', 0)} of {params.max_steps}: the data ran out of valid samples "
            f"(skipped: {skipped}); check the sources with `pairmine verify OUTPUT`; rerunning resumes from the last checkpoint")
    counts = dict(value.pop("skipped", {}))  # by reason, and "valid": the rows trained on
    return _write_summary(plan, {
        "wall_seconds": round(time.perf_counter() - started, 3), **value, "samples": counts.pop("valid", 0), "skipped": counts,
        "checkpoint": storage.join(uri, storage.basename(result.checkpoint.path)) if result.checkpoint else None,  # with its s3://
        "validation": {k: v for k, v in (result.metrics or {}).items() if k.startswith("val_")},
        "workers": scaling.num_workers, "use_gpu": scaling.use_gpu, "worker_failures": failures,
    })


def _write_summary(plan: dict, fields: dict) -> dict:
    """The run's summary.json: what identifies the run, its losses over every fit (from its metric lines), and `fields`."""
    uri = plan["run_uri"]
    summary = {"run": uri, "eraser": plan["params"].eraser.name, "config_hash": plan["config_hash"], "version": __version__,
               "metrics": loss_summary(read_step_metrics(uri)), **fields}
    storage.write_bytes(storage.join(uri, SUMMARY_FILE), json.dumps(summary, indent=2).encode())
    return summary


def _rebuilt_summary(plan: dict) -> dict:
    """The summary of a finished run whose summary.json is gone, from what its checkpoints wrote (its metric lines,
    the last validation, progress.json), written back; this fit's own figures (wall time, skip counts) are lost."""
    uri, progress = plan["run_uri"], plan["progress"]
    log.warning("%s is complete but its %s is gone: rebuilt from its metrics and last checkpoint", uri, SUMMARY_FILE)
    return _write_summary(plan, {
        "wall_seconds": None, "steps": progress["step"], "position": progress["position"],
        "checkpoint": storage.join(uri, progress["checkpoint"]) if progress.get("checkpoint") else None,
        "validation": read_validation(uri, progress["step"]), "rebuilt": True,
    })


def _prune_checkpoints(uri: str, keep: int) -> None:
    """Only the latest `keep` checkpoints stay, and those Ray's snapshot lists (Ray refuses to restore a run whose
    listed checkpoints are gone): Ray prunes those its own fit reported, and a resumed run's start checkpoint
    (an earlier fit's, committed in progress.json only) stayed beside them, one more folder per interruption."""
    listed = _listed(uri)
    for _, folder in _checkpoints(uri)[:-keep]:
        if storage.basename(folder) not in listed:
            storage.delete_tree(folder)


def _noting_ctrl_c(trainer) -> threading.Event:
    """An event set when Ctrl-C reaches the driver during ``trainer.fit()``. Ray Train installs its own SIGINT
    handler there (it aborts the run, then the driver exits 1, as if it had failed); this wraps that handler."""
    interrupted = threading.Event()
    register = getattr(trainer, "_register_sigint_handler", None)
    if register is None:  # another Ray Train: Ctrl-C stays its KeyboardInterrupt or its exit
        return interrupted

    def register_noting(controller):
        register(controller)
        theirs = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            interrupted.set()
            theirs(signum, frame)

        signal.signal(signal.SIGINT, handler)

    trainer._register_sigint_handler = register_noting
    return interrupted


def format_summary(summary: dict) -> str:
    metrics = summary.get("metrics", {})
    lines = [
        f"{summary['eraser']} training {summary['run']}: {summary.get('steps', 0)} steps "
        + (f"(resumed from {summary.get('resumed_from_step', 0)}) in {summary['wall_seconds']:.1f} s" if summary.get("wall_seconds") is not None
           else "(summary rebuilt from the run's metrics: its wall time and skip counts are not known)"),
        f"  loss: {metrics.get('first_loss')} (first quarter) -> {metrics.get('last_loss')} (last quarter); "
        f"{metrics.get('samples_per_s')} samples/s (median)",
        "  skipped samples: " + ((", ".join(f"{k} {v}" for k, v in summary["skipped"].items() if k != "valid") or "none")  # valid: older runs
                                 if "skipped" in summary else "not known"),
        "  validation: " + (", ".join(f"{k[4:]} {v}" for k, v in summary.get("validation", {}).items()) or "none"),
        f"  checkpoint: {summary.get('checkpoint')}",
        *([f"  worker failures (retried): {len(summary['worker_failures'])}, last: {summary['worker_failures'][-1]}"]
          if summary.get("worker_failures") else []),
        *(["  already complete: nothing was run (the summary above is the run's own; a new run, --set name=..., starts from the base weights)"]
          if summary.get("already_complete") else []),
    ]
    return "\n".join(lines)
