"""The one adapter between a pipeline's steps and Ray Data: CPU steps as tasks, a model stage as an actor pool.

Every pipeline has the same three steps per row: ``prepare`` (CPU: decode, analyse), a ``ModelStage``
(score or mask), ``finish`` (CPU: compose, encode, pack the writer row). ``around_model`` wires them:
a stage that loads no model runs inside the CPU task; one that does runs as a ``map_batches`` actor
pool that builds its model once per actor, on the GPUs, with the actor count and the batch of its
config. Rows carry the unit of work in their ``"item"`` column between the steps.

Around an actor stage only the model's inputs go to the actor and only its outputs come back: the
prepare task takes the stage's ``inputs`` out of the item and parks the item in the object store
(``Parked``: a reference, owned by the worker that put it); the finish task fetches it, in place, and
``apply``-s the output. The whole item crossed the actor before,
and its arrays were copied into the object store again on the way out, on the actor's one thread, while
the GPU waited. The rows travel as pandas blocks (``run.pipeline_data_context`` keeps them so): Ray
serialises arrays out of band and reads them back in place, where an Arrow block pickles each value
whole into a binary column. Inputs, outputs and parked items are sized by their arrays, so that Ray
Data's memory budgets count them. An item lost with the worker that parked it (its owner) costs that item
alone: its inputs are left for the next run, and the summary counts it (``items_lost``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..operators.devices import actor_device
from ..operators.model_stage import ModelStage, process, runs_model
from ..operators.stats import Stats

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

log = logging.getLogger(__name__)

ITEM = "item"  # the row column holding a unit of work between prepare, the model stage and finish
INPUTS = "model_inputs"  # the row column of what a stage's model needs of the item, on its way to the actor
OUTPUT = "model_output"  # the row column of the model's output for the item and the call's stats, on the way back
IDLE = "_idle"  # Stats.seconds["<stage>_idle"]: an actor stage's time between calls (summary: busy fraction)
START = "_start"  # Stats.seconds["<stage>_start"]: its actors' model loads, Stats.counts["<stage>_start"]: how many


class ActorClock:
    """Busy and idle time of an actor's calls, shared out to the stats of what each call worked on.

    Idle is the time since the previous call ended (0 on the first), so busy / (busy + idle) over a
    run is the actor's busy fraction.
    """

    def __init__(self, start_seconds: float = 0.0):
        self._last_end: float | None = None
        self.start_seconds = start_seconds  # the actor's model load, reported with its first call

    def record(self, stage: str, started: float, stats: list[Stats], weights: list[float]) -> None:
        """Add the call that began at `started` to `stats`, in proportion to `weights` (equally when all 0)."""
        end = time.perf_counter()
        busy, idle = end - started, 0.0 if self._last_end is None else started - self._last_end
        total = sum(weights)
        for item, weight in zip(stats, weights):
            share = weight / total if total else 1 / len(stats)
            item.seconds[stage] += busy * share
            item.seconds[stage + IDLE] += idle * share
        if self._last_end is None and stats:
            stats[0].seconds[stage + START] += self.start_seconds
            stats[0].counts[stage + START] += 1
        self._last_end = end


def on_assigned_device(stage: ModelStage, gpu_ids: list | None = None) -> ModelStage:
    """The stage with its config's device made concrete from the GPUs Ray gave this actor (``devices.actor_device``)."""
    import ray
    import torch

    if gpu_ids is None:  # outside Ray (a direct call) nothing is assigned
        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
    device = actor_device(stage.params.device, gpu_ids, torch.cuda.is_available())
    return dataclasses.replace(stage, params=stage.params.model_copy(update={"device": device}))


class StageActor:
    """A model stage as a Ray Data callable class: the model built once, on the device Ray assigned, each
    batch's items processed in one call."""

    def __init__(self, stage: ModelStage, gpu_ids: list | None = None):
        start = time.perf_counter()
        stage = on_assigned_device(stage, gpu_ids)
        self.stage, self.model = stage, stage.params.build()
        self.clock = ActorClock(time.perf_counter() - start)

    def __call__(self, batch: "pd.DataFrame") -> "pd.DataFrame":
        """The batch's inputs through the model in one call; the rows leave with the outputs in their place, each
        with its share of the call's time (by its count of model units) in a Stats for the item."""
        import pandas as pd

        start = time.perf_counter()
        inputs = [sized.item for sized in batch[INPUTS]]
        outputs = self.stage.run(self.model, inputs)
        stats = [Stats() for _ in inputs]
        self.clock.record(self.stage.name, start, stats, [float(len(units)) for units in inputs])
        rows = batch.drop(columns=[INPUTS])
        rows[OUTPUT] = pd.Series([Sized((output, s)) for output, s in zip(outputs, stats, strict=True)], index=batch.index, dtype=object)
        return rows


def _inline(row: dict, prepare: Callable, stage: ModelStage | None, model: Any, finish: Callable) -> dict:
    """All three steps in one CPU task (no stage, or one that loads no model)."""
    row = prepare(row)
    if stage is not None:
        item = row[ITEM]
        with item.stats.timed(stage.name):
            process(stage, model, item)
    return finish(row)


def nbytes(value: Any, seen: set[int] | None = None) -> int:
    """The bytes of the arrays a value holds (dataclasses, lists, tuples and dicts are looked into): each array's
    memory counted once however often it is referenced, views as the array they look into (an image, its
    entities' sources and crops: the image)."""
    seen = set() if seen is None else seen
    if isinstance(value, np.ndarray):
        while isinstance(value.base, np.ndarray):
            value = value.base
        if id(value) in seen:
            return 0
        seen.add(id(value))
        return value.nbytes
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v, seen) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v, seen) for v in value.values())
    return 0


class Sized:
    """A unit of work in a pandas block, sized by the arrays it holds: Ray Data sizes an object column with
    ``sys.getsizeof`` and would count a group of 16 images as a few bytes in its memory budgets."""

    __slots__ = ("item", "size")

    def __init__(self, item: Any):
        self.item, self.size = item, nbytes(item)

    def __sizeof__(self) -> int:
        return self.size


LOST = "items_lost"  # Stats.counts: units of work lost with a worker while they waited for a model stage


class Parked:
    """A unit of work left in the object store while its inputs visit the model's actor, sized by the item's
    arrays for Ray Data's memory budgets. The worker that put it owns it: Ray keeps a worker that owns objects
    in scope, but one that dies (a crash, Ray's OOM killer, its node gone) takes its parked items with it, and
    Ray cannot make them again (no lineage for a put)."""

    __slots__ = ("ref", "size", "unit")

    def __init__(self, item: Any):
        import ray

        self.ref, self.size, self.unit = ray.put(item), nbytes(item), item.unit

    def __sizeof__(self) -> int:
        return self.size

    def fetch(self) -> Any:
        """The item, its arrays read in place; ObjectLostError (OwnerDiedError is one) when it went with its worker."""
        import ray

        return ray.get(self.ref)


def _prepare_frame(batch: "pa.Table", prepare: Callable[[dict], dict], stage: ModelStage) -> "pd.DataFrame":
    """``prepare`` on each row of a batch (python values, as ``map`` gives them), the stage's inputs taken out of
    the item and the item parked, as a pandas block whose columns hold the objects themselves (module note)."""
    import pandas as pd

    rows = []
    for row in map(prepare, batch.to_pylist()):
        item = row[ITEM]
        inputs = Sized(stage.inputs(item))
        rows.append({**row, ITEM: Parked(item), INPUTS: inputs})
    return pd.DataFrame({key: pd.Series([row[key] for row in rows], dtype=object) for key in rows[0]})


def with_output(stage: ModelStage, item: Any, cell: Sized) -> Any:
    """The item with an actor's ``OUTPUT`` cell for it applied: the model's output and the call's stats."""
    output, stats = cell.item
    stage.apply(item, output)
    item.stats.merge(stats)
    return item


def _finish_row(row: dict, stage: ModelStage, finish: Callable[[dict], dict]) -> dict:
    """The parked item back, in place, with the model's output; then ``finish``. An item lost with its worker
    becomes a writer row that accounts for nothing (its inputs are not marked done: the next run mines them) and
    is counted, so the run goes on and its summary says so."""
    from ray.exceptions import ObjectLostError

    from .writer import pack_group

    parked = row[ITEM]
    try:
        item = parked.fetch()
    except ObjectLostError as lost:
        log.warning("a unit of work of %s was lost with the worker that held it (%s): left for the next run", parked.unit, type(lost).__name__)
        return pack_group(parked.unit, [], -1, [], [], Stats(Counter({LOST: 1})))
    return finish({**{k: v for k, v in row.items() if k != OUTPUT}, ITEM: with_output(stage, item, row[OUTPUT])})


def around_model(rows, prepare: Callable[[dict], dict], finish: Callable[[dict], dict], stage: ModelStage | None):
    """The pipeline's rows after prepare → stage → finish; ``prepare`` puts the unit of work in ``row["item"]``."""
    if stage is None or not runs_model(stage.params):
        model = stage.params.build() if stage is not None else None  # weight-free: a config that is its own model
        return rows.map(partial(_inline, prepare=prepare, stage=stage, model=model, finish=finish))
    from ray.data import ActorPoolStrategy

    params = stage.params
    # Ray Data fuses a task step into the actor step after it when their resource requests match (a model
    # stage on CPUs): every row's prepare would then run on the actor pool alone. A token memory request
    # (1 byte) keeps the prepare in CPU tasks.
    prepared = rows.map_batches(_prepare_frame, fn_kwargs={"prepare": prepare, "stage": stage},
                                batch_size=1, batch_format="pyarrow", memory=1)
    staged = prepared.map_batches(
        StageActor,
        fn_constructor_args=(stage,),
        batch_size=params.rows_per_call or stage.items_per_call,
        batch_format="pandas",
        compute=ActorPoolStrategy(min_size=params.concurrency[0], max_size=params.concurrency[1]),
        num_gpus=params.num_gpus,
        num_cpus=params.actor_cpus,
    )
    return staged.map(partial(_finish_row, stage=stage, finish=finish))
