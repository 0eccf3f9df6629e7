"""The ``pairmine train`` config: what to read, which eraser to train, how, and where the run lives.

Validated like the pipelines' configs (``pipelines/config.load_config``: YAML + ``--set``, one-line
errors). Fields marked runtime (how the job is scaled, logged and checkpointed) stay out of the
config hash; a run's folder refuses a rerun whose hash differs, since resuming it would mix two
trainings in one set of checkpoints.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .. import storage
from ..operators.mask_enhance import MODES, MaskEnhanceParams
from ..operators.params import RUNTIME, Params
from ..pipelines.config import RayParams
from .erasers import AnyEraser

# The release's training-time mask enhancement: its six modes (docs/METHODS.md) drawn per sample.
RELEASE_MASK_MODES = ("exact", "erode", "dilate", "hull", "ellipse", "bbox")


class Source(Params):
    """One pipeline output to train on, with its share of the samples."""

    output: str = Field(min_length=1, description="a pipeline output folder or s3:// prefix; only shards its manifest lists are read")
    weight: float = Field(1.0, gt=0, description="relative share of the training samples drawn from this output per epoch")


class DataParams(Params):
    sources: tuple[Source, ...] = Field(min_length=1, description="the outputs to read, each with a mixing weight")
    resolution: int = Field(512, ge=32, le=4096, description="training crops are resolution x resolution pixels (a multiple of 8)")
    max_zoom: float = Field(
        1.25, ge=1, le=4, description="a sample's short side is resized to resolution x U(1, max_zoom) before the random crop",
    )
    val_fraction: float = Field(
        0.01, ge=0, lt=1, description="share of samples held out for validation, chosen by a hash of the sample key (stable across runs)",
    )
    val_samples: int = Field(8, ge=0, le=1024, description="held-out samples scored at each validation (and drawn on its sheet)")
    mask_enhancement: MaskEnhanceParams = Field(
        default_factory=lambda: MaskEnhanceParams(modes=RELEASE_MASK_MODES),
        description=f"training masks drawn from these modes per sample ({MODES}); exact keeps the mined mask",
    )
    shuffle_buffer: int = Field(64, ge=0, description="rows of each worker's local shuffle buffer (0: off)", json_schema_extra=RUNTIME)
    decode_batch: int = Field(8, ge=1, le=1024, description="samples per decode task call", json_schema_extra=RUNTIME)

    @field_validator("sources")
    @classmethod
    def _one_source_per_output(cls, sources):
        seen = set()
        for source in sources:
            where = storage.normalize(source.output)
            if where in seen:  # its shards would be drawn twice an epoch, beside each other's samples
                raise ValueError(f"{source.output} is listed twice: give each output once (its weight sets its share)")
            seen.add(where)
        return sources

    @field_validator("resolution")
    @classmethod
    def _latent_multiple(cls, value):
        if value % 8:
            raise ValueError("resolution must be a multiple of 8 (the VAE's downsampling)")
        return value


class OptimParams(Params):
    learning_rate: float = Field(1.6e-5, gt=0, description="peak learning rate (SmartEraser's release: 5e-7 x 4 per GPU x 8 GPUs)")
    scale_lr: bool = Field(False, description="multiply learning_rate by batch size x workers x accumulation (the release's --scale_lr)")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the gradient norm to this (null: no clipping)")
    schedule: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts"] = Field(
        "constant", description="learning-rate schedule over max_steps (diffusers' get_scheduler)",
    )
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    cycles: int = Field(1, ge=1, description="cosine_with_restarts: number of cycles")


class ScalingParams(Params):
    """How the job is spread over Ray Train workers; runtime, so not hashed."""

    num_workers: int = Field(1, ge=1, description="data-parallel training workers (one per GPU on a GPU cluster)")
    use_gpu: bool = Field(False, description="one GPU per worker, NCCL; false: CPU workers, gloo")
    cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs each worker reserves; leave CPUs free for the data path (Ray Data gets what training does not "
        "reserve: on a 2-CPU machine, 2 workers need at most 0.5 each)",
    )
    max_failures: int = Field(2, ge=0, description="times a failed worker group is restarted from the latest checkpoint")


class TrainParams(Params):
    """Everything that decides the trained weights (hashed), and where the run lives."""

    seed: int = Field(0, ge=0, description="seed of the data plan, the augmentation, the noise and the new layers' initial weights")
    batch_size: int = Field(4, ge=1, le=4096, description="samples per worker per micro-step (the release: 4 per GPU)")
    grad_accumulation: int = Field(1, ge=1, le=1024, description="micro-steps per optimizer step")
    max_steps: int = Field(1000, ge=1, description="optimizer steps of the whole run")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "fp16", description="autocast dtype on GPUs (fp16 with a gradient scaler); CPU workers always train in fp32",
    )
    condition_dropout: float = Field(0.1, ge=0, le=1, description="share of steps trained with the empty condition (classifier-free guidance)")
    eraser: AnyEraser = Field(description="the eraser to train and its pretrained parts, chosen by `name`: smarteraser, eradiff or omnieraser")
    data: DataParams
    optim: OptimParams = Field(default_factory=OptimParams)
    # where and how the run executes: runtime
    storage: str = Field(min_length=1, description="folder or s3:// prefix holding the runs (Ray Train storage)", json_schema_extra=RUNTIME)
    name: str = Field(
        "smarteraser", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the run's folder under storage; rerunning with the same "
        "name resumes from its latest checkpoint", json_schema_extra=RUNTIME,
    )
    checkpoint_every: int = Field(500, ge=1, description="optimizer steps between checkpoints (and validations)", json_schema_extra=RUNTIME)
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept in storage, the latest ones", json_schema_extra=RUNTIME)
    log_every: int = Field(10, ge=1, description="optimizer steps between metric lines (and progress output)", json_schema_extra=RUNTIME)
    scaling: ScalingParams = Field(default_factory=ScalingParams, json_schema_extra=RUNTIME)
    ray: RayParams = Field(default_factory=RayParams, description="where the job runs: the pipelines' ray settings", json_schema_extra=RUNTIME)

    @model_validator(mode="after")
    def _checks(self):
        if self.data.resolution % self.eraser.latent_multiple:
            raise ValueError(f"data.resolution {self.data.resolution} is not a multiple of {self.eraser.latent_multiple}, which {self.eraser.name} needs")
        return self


def with_absolute_paths(params: TrainParams) -> TrainParams:
    """The config with its local paths (eraser parts, sources, storage) made absolute against this process's folder,
    for the workers: Ray Train runs them in a folder of its own, where a relative path names nothing. The hash is
    taken over the paths as written."""
    eraser = params.eraser.model_copy(update={name: storage.absolute(getattr(params.eraser, name)) for name in params.eraser.paths})
    sources = tuple(source.model_copy(update={"output": storage.absolute(source.output)}) for source in params.data.sources)
    return params.model_copy(update={"eraser": eraser, "data": params.data.model_copy(update={"sources": sources}),
                                     "storage": storage.absolute(params.storage)})
