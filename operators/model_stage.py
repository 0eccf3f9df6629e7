"""What every model stage has: the runtime fields of its config, its checks, and the shape of its step.

A model stage is a step that loads weights (CLIP entity scoring, GroundingDINO + SAM2 masking). Its
config (``ModelStageParams``) says how the step runs (device, batch size, GPUs, actors: runtime fields,
left out of the config hash) and offers ``check_files()`` (fast, in the driver), ``build()`` (the
model, once per process or actor) and ``verify()`` (both, before Ray starts). What the step does to
items between two CPU steps is its ``ModelStage``: what the model needs of an item, the model on several
items' inputs in one call, and its output put back into each item. ``pipelines/model_stages.py`` runs any stage as a Ray actor pool, or in the CPU task when it
loads no model; nothing here imports Ray or torch.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, Sequence

from pydantic import Field

from .devices import Device
from .params import RUNTIME, Concurrency, Params
from .stats import Stats


class ModelStageParams(Params):
    """The config of a stage that runs a model: how it runs (runtime) and how it is checked and built."""

    device: Device = Field(
        "auto", description="auto: CUDA when the stage's actor sees a GPU (num_gpus > 0), else the CPU", json_schema_extra=RUNTIME,
    )
    batch_size: int = Field(
        8, ge=1, le=4096, description="items per model call (GroundingDINO + SAM2: frames; CLIP: entity crops)",
        json_schema_extra=RUNTIME,
    )
    num_gpus: float = Field(
        0.0, ge=0, le=1, description="GPUs per actor (1 on GPU clusters); a fraction shares a GPU between actors",
        json_schema_extra=RUNTIME,
    )
    concurrency: Concurrency = Field((1, 1), description="(min, max) actors of the stage", json_schema_extra=RUNTIME)
    actor_cpus: float = Field(
        1.0, ge=0, le=64, description="CPUs each actor reserves, also with a GPU: its threads for the pre- and "
        "post-processing around the model (Ray sets its torch threads to it)", json_schema_extra=RUNTIME,
    )
    rows_per_call: int | None = Field(
        None, ge=1, le=4096, description="groups (Syn4Removal) or segments (Video4Removal) one actor call takes "
        "(null: the stage's own, 4 / 2); on a GPU, enough to fill batch_size", json_schema_extra=RUNTIME,
    )

    def check_files(self) -> None:
        """Fail fast, in the driver, when a weights file or a config given as a path is missing; loads nothing."""
        raise NotImplementedError

    def build(self) -> Any:
        """The stage's model, ready to run (loads weights: once per process or actor)."""
        raise NotImplementedError

    def verify(self) -> None:
        """Before Ray starts: the files exist (a quick one-line error) and the weights load into the
        architecture, here on the CPU with the actors' own loader (a mismatch is a one-line error naming
        the path and the model, instead of an actor dying inside the run)."""
        self.check_files()
        self.model_copy(update={"device": "cpu"}).build()


class StageItem(Protocol):
    """What travels through a model stage: one unit of work (a group of images, a video segment) of an input unit
    (a tar, a video), with its stats."""

    unit: str
    stats: Stats


class ModelStage(Protocol):
    """One step between two CPU steps of a pipeline: a built model on the inputs of several items in one call.

    ``inputs`` takes out of an item what its model needs (in the CPU task before the stage: only that goes to
    the model's actor, while the item waits in the object store), a list of the model's units (entity crops,
    frame pairs: the call's time is shared out by their count); ``run`` gives each item's inputs their output,
    all in one call; ``apply`` puts an item's output into it (in the CPU task after). ``name`` is its stage in
    the run summary.
    """

    name: ClassVar[str]
    params: Params  # a ModelStageParams, or the config of a weight-free step that runs in the CPU task
    items_per_call: int

    def inputs(self, item: StageItem) -> list: ...

    def run(self, model: Any, inputs: Sequence[list]) -> list: ...

    def apply(self, item: StageItem, output: Any) -> None: ...


def process(stage: ModelStage, model: Any, item: StageItem) -> None:
    """A stage's three steps on one item in one process (a weight-free stage in the CPU task, a direct call)."""
    (output,) = stage.run(model, [stage.inputs(item)])
    stage.apply(item, output)


def runs_model(params: Params) -> bool:
    """Whether a step's config loads weights (and so runs as its own actor stage)."""
    return isinstance(params, ModelStageParams)
