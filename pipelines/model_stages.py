"""The one adapter between a pipeline's steps and Ray Data: CPU steps as tasks, a model stage as an actor pool.

Every pipeline has the same three steps per row: ``prepare`` (CPU: decode, analyse), a ``ModelStage``
(score or mask), ``finish`` (CPU: compose, encode, pack the writer row). ``around_model`` wires them:
a stage that loads no model runs inside the CPU task; one that does runs as a ``map_batches`` actor
pool that builds its model once per actor, on the GPUs, with the actor count and the batch of its
config. Rows carry the unit of work in their ``"item"`` column between the steps.

Around an actor stage the rows travel as pandas blocks (``run.pipeline_data_context`` keeps them so):
Ray serialises the items' arrays out of band, one copy into the object store, read back in place
(read-only), where an Arrow block pickles each item whole into a binary column and unpickles it at
every hop: a 16-image full-resolution group costs ~0.2 s instead of seconds per hop. The unit of work
travels ``Sized``, so that Ray Data's memory budgets count its arrays.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..operators.devices import actor_device
from ..operators.model_stage import ModelStage, runs_model
from ..operators.stats import Stats

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

ITEM = "item"  # the row column holding a unit of work between prepare, the model stage and finish
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
        start = time.perf_counter()
        items = [sized.item for sized in batch[ITEM]]
        weights = self.stage.process(self.model, items)
        self.clock.record(self.stage.name, start, [item.stats for item in items], weights)
        return batch


def _inline(row: dict, prepare: Callable, stage: ModelStage | None, model: Any, finish: Callable) -> dict:
    """All three steps in one CPU task (no stage, or one that loads no model)."""
    row = prepare(row)
    if stage is not None:
        item = row[ITEM]
        with item.stats.timed(stage.name):
            stage.process(model, [item])
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


def _prepare_frame(batch: "pa.Table", prepare: Callable[[dict], dict]) -> "pd.DataFrame":
    """``prepare`` on each row of a batch (python values, as ``map`` gives them), as a pandas block whose
    columns hold the objects themselves, the unit of work ``Sized`` (see the module's note)."""
    import pandas as pd

    rows = [{**row, ITEM: Sized(row[ITEM])} for row in map(prepare, batch.to_pylist())]
    return pd.DataFrame({key: pd.Series([row[key] for row in rows], dtype=object) for key in rows[0]})


def _finish_row(row: dict, finish: Callable[[dict], dict]) -> dict:
    return finish({**row, ITEM: row[ITEM].item})


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
    prepared = rows.map_batches(_prepare_frame, fn_kwargs={"prepare": prepare}, batch_size=1, batch_format="pyarrow", memory=1)
    staged = prepared.map_batches(
        StageActor,
        fn_constructor_args=(stage,),
        batch_size=params.rows_per_call or stage.items_per_call,
        batch_format="pandas",
        compute=ActorPoolStrategy(min_size=params.concurrency[0], max_size=params.concurrency[1]),
        num_gpus=params.num_gpus,
        num_cpus=params.actor_cpus,
    )
    return staged.map(partial(_finish_row, finish=finish))
