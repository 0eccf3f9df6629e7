"""Run a pipeline job: validate everything, plan against the output's progress, execute, summarise.

A pipeline is declared once (``Pipeline``): its name and help, its config model, how its inputs are
found and read, its three steps (prepare → model stage → finish) and what its summary counts. This
module turns a declaration into a run and into a CLI command. Every check that can fail on user
input (config, inputs, output, an output made by another config, model files) runs before Ray
starts, so such mistakes cost a one-line error and no work.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

from pydantic import BaseModel

from .. import __version__, logs, storage
from ..dataset import NOTHING_TO_DO, SUCCESS
from ..operators.model_stage import ModelStage, runs_model
from .cli import PIPELINE_EXIT_CODES, Command, add_config_arguments, nonnegative_arg, path_arg
from .config import ConfigError, config_hash, load_config, to_yaml
from .inputs import Unit
from .model_stages import LOST
from .summary import build_summary, format_summary

log = logging.getLogger("pairmine")


@dataclass(frozen=True)
class Pipeline:
    """Everything a pipeline contributes; the runner, the writer and the CLI do the rest."""

    name: str
    help: str  # one line for `pairmine --help`
    description: str
    examples: str
    config_model: type[BaseModel]
    discover: Callable[[list[str]], list[Unit]]  # --input arguments -> units (InputError when unusable)
    read: Callable  # (pending units, Progress, config) -> Ray Dataset of reader rows, or None when nothing is left
    prepare: Callable  # (row, config) -> row with the unit of work in row["item"] (model_stages.ITEM)
    stage: Callable  # (config) -> the ModelStage between prepare and finish, or None
    finish: Callable  # (row, config, config_hash) -> the writer row (writer.pack_group)
    rows_per_shard: Callable[[BaseModel], int]  # writer rows that fill about one shard
    stage_items: dict[str, tuple[str, ...]]  # summary: stage -> the counts its throughput is measured in (first present)


def pipeline_data_context() -> None:
    """Ray Data settings of a pipeline run."""
    from ray.data import DataContext

    context = DataContext.get_current()
    # Rows are whole groups (seconds of work each): one row per block makes one task per group,
    # instead of Ray packing a tar's groups into one block processed serially.
    context.target_max_block_size = 1
    # Around a model stage, groups and segments travel as pandas blocks (model_stages: their arrays out of
    # band, read back in place); a pandas batch would otherwise become an Arrow block of pickled objects.
    context.batch_to_block_arrow_format = False
    context.enable_fallback_to_arrow_object_ext_type = True  # the rows `map` makes (readers', inline steps')


def build(pipeline: Pipeline, units: list[Unit], progress, config, digest: str):
    """The run's Ray Dataset of writer rows, or None when there is nothing to read."""
    from .model_stages import around_model

    rows = pipeline.read(units, progress, config)
    if rows is None:
        return None
    prepare = partial(pipeline.prepare, config=config)
    finish = partial(pipeline.finish, config=config, config_hash=digest)
    return around_model(rows, prepare, finish, pipeline.stage(config))


def check_model_stage(stage: ModelStage | None, ray_params) -> None:
    if stage is not None and runs_model(stage.params):
        stage.params.verify()
        check_reservation(stage, ray_params)


def check_reservation(stage: ModelStage, ray_params) -> None:
    """The model stage's actors must leave an embedded Ray one CPU for the CPU steps (each decode or compose task
    takes one): else the actors hold every CPU and the run waits forever, silently. A cluster can grow, so only
    an embedded Ray is checked."""
    if ray_params.address or os.environ.get("RAY_ADDRESS"):
        return
    from .runtime import embedded_cpus

    cpus = embedded_cpus(ray_params.num_cpus)
    params = stage.params
    held = params.actor_cpus * params.concurrency[0]
    if cpus - held < 1:
        raise ConfigError(f"the {stage.name} stage's actors reserve {held:g} of the embedded Ray's {cpus:g} CPUs (actor_cpus x "
                          f"concurrency[0]), leaving less than the one CPU each decode / compose task needs: the run would wait "
                          "forever; lower the stage's actor_cpus or concurrency, or raise ray.num_cpus")


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + secrets.token_hex(2)


def prepare_run(pipeline: Pipeline, inputs: list[str], output: str, config_path: str | None, overrides: list[str], create: bool = True,
                say: bool = True):
    """All user-facing checks: returns (config, hash, units, progress, pending units). `create`: make the output folder;
    `say`: warn of inputs changed since an earlier run (a run says it once, when it plans under the lease)."""
    from .inputs import InputError

    config = load_config(pipeline.config_model, config_path, overrides)
    check_model_stage(pipeline.stage(config), config.ray)
    digest = config_hash(config)
    if not inputs:
        raise InputError("no --input given")
    units = pipeline.discover(inputs)
    storage.check_writable(output, create)
    return (config, digest, *plan(pipeline, units, output, config, say))


def plan(pipeline: Pipeline, units: list[Unit], output: str, config: BaseModel, say: bool = True):
    """What earlier runs committed to the output: the units named as those runs knew them (`inputs.reconcile`),
    that progress, and the units still to do, the largest first: Ray Data starts work in about that order,
    so the last wave is small units and leaves no core idle for long."""
    from .inputs import reconcile
    from .writer import read_progress

    progress = read_progress(output, pipeline.name, config_hash(config), config)
    units = reconcile(units, progress.sources, say)
    return units, progress, sorted((u for u in units if u.name not in progress.complete_units), key=lambda u: -u.size)


def run(pipeline: Pipeline, inputs: list[str], output: str, config_path: str | None = None, overrides: list[str] = (),
        progress_bars: bool = True, wait: float = 0.0) -> dict:
    """Run a pipeline on an output it holds the lease of (``lease.Lease``: `wait` seconds for a live holder)."""
    from .lease import Lease

    import ray.data  # noqa: F401  Ray sets up its loggers when imported: run_log reroutes them

    config, digest, units, _, _ = prepare_run(pipeline, inputs, output, config_path, overrides, say=False)
    run_id = new_run_id()
    with Lease(output, run_id) as lease:
        lease.acquire(wait)  # before the run's log: a run turned away (exit 3) leaves no log behind
        with logs.run_log(output, run_id) as log_uri:
            units, progress, pending = plan(pipeline, units, output, config)  # read again under the lease: another run may have committed
            log.info("%s run %s: %d input units, %d already complete in %s, config %s; log: %s", pipeline.name, run_id, len(units),
                     len(units) - len(pending), output, digest[:12], log_uri, extra={"run": run_id, "pipeline": pipeline.name})
            return _run(pipeline, inputs, output, config, digest, units, progress, pending, run_id, progress_bars, lease.token)


def _run(pipeline: Pipeline, inputs, output, config, digest, units, progress, pending, run_id: str, progress_bars: bool,
         lease: str) -> dict:
    from .dedup import start_counter
    from .lease import confirm
    from .progress import Display, new_board, pipeline_lines
    from .runtime import io_concurrency, start_ray
    from .writer import ShardSink, remove_orphans, write_success

    confirm(output, lease)  # what it removes as orphans are files of its own output's dead runs, never a live run's
    storage.delete(storage.join(output, SUCCESS))
    removed = remove_orphans(output)
    if removed:
        log.info("removed %d files of an interrupted earlier run", removed)
    started = time.perf_counter()
    results: list[dict] = []
    resources = {}
    if pending:
        resources = start_ray(config.ray, progress_bars)
        pipeline_data_context()
        dataset = build(pipeline, pending, progress, config, digest)
        if dataset is not None:
            # the board feeds the display only: without one, no actor process idling beside the work
            board = new_board({unit: len(ids) for unit, ids in progress.consumed.items()}) if progress_bars else None
            sink = ShardSink(output, pipeline.name, run_id, digest, __version__, config.shards, pipeline.rows_per_shard(config), board,
                             start_counter(output, config.dedup), {u.name: (u.uri, u.file_size) for u in pending}, lease)
            lines = lambda state, elapsed: pipeline_lines(state, elapsed, len(pending))  # noqa: E731
            with Display(board, lines, enabled=progress_bars):
                # The write is I/O-bound: it reserves no CPU, which also keeps it from fusing with the
                # compute before it (that would run a whole shard's groups serially in the write task).
                dataset.write_datasink(sink, ray_remote_args={"num_cpus": 0}, concurrency=io_concurrency())
            results = sink.results
    wall = time.perf_counter() - started
    summary = build_summary(
        results,
        wall,
        pipeline.stage_items,
        pipeline=pipeline.name,
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
    committed = sum(len(r["shards"]) for r in results)  # manifest rows this run wrote (a folder is listed again every run)
    summary["status"] = ("incomplete" if summary["counts"].get(LOST) else NOTHING_TO_DO if not committed
                         else "done_with_rejects" if summary["rejects"]["total"] else "done")
    confirm(output, lease)  # a run that lost its lease after its last commit writes no summary beside the live run
    write_success(output, summary)
    return summary


def plan_only(pipeline: Pipeline, inputs: list[str], output: str, config_path: str | None, overrides: list[str]) -> dict:
    """What a run would do (``--dry-run``), after the same checks."""
    from .lease import holder_of

    config, digest, units, progress, pending = prepare_run(pipeline, inputs, output, config_path, overrides, create=False)
    return {
        "pipeline": pipeline.name,
        "config_hash": digest,
        "units": [{"name": u.name, "kind": u.kind, "uri": u.uri, "done": u.name in progress.complete_units,
                   "ids_done": len(progress.consumed.get(u.name, ()))} for u in units],
        "output_totals": {"shards": progress.shards, "samples": progress.samples},
        "lease": holder_of(output),  # a run holding the output now (a real run would wait for it, or exit 3)
    }


def print_config(model: type[BaseModel], args: argparse.Namespace) -> int:
    """``--print-config``: the resolved config as YAML and its hash."""
    config = load_config(model, args.config, args.set)
    print(to_yaml(config) + f"# config_hash: {config_hash(config)}")
    return 0


def pipeline_command(pipeline: Pipeline) -> Command:
    """The CLI command of a pipeline: --input ... --output ... plus the config options."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input", action="append", required=True, type=path_arg, metavar="PATH", help="input path or s3:// URI (repeatable)")
        parser.add_argument("--output", required=True, type=path_arg, metavar="PATH", help="output directory or s3:// prefix")
        add_config_arguments(parser, f"default: the packaged defaults, see configs/{pipeline.name}.yaml")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
        parser.add_argument("--wait", type=nonnegative_arg, default=0.0, metavar="SECONDS",
                            help="when another run holds the output, wait this long for it (default: exit 3 at once)")

    def run_command(args: argparse.Namespace) -> int:
        if args.print_config:
            return print_config(pipeline.config_model, args)
        if args.dry_run:
            print(json.dumps(plan_only(pipeline, args.input, args.output, args.config, args.set), indent=2))
            return 0
        print(format_summary(run(pipeline, args.input, args.output, args.config, args.set, progress_bars=not args.no_progress, wait=args.wait)))
        return 0

    return Command(pipeline.name, pipeline.help, pipeline.description, pipeline.examples, add_arguments, run_command, PIPELINE_EXIT_CODES)

