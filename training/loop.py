"""The training loop every Ray Train worker runs: one readable loop, the rest in the eraser and the data code.

Per optimizer step: ``grad_accumulation`` micro-batches from this worker's shard of the stream, each
sample's loss weighted by its ``valid`` flag (a skipped sample weighs 0, so every worker still steps
in lockstep), gradient clipping, the optimizer and the learning-rate schedule. Every
``checkpoint_every`` steps rank 0 validates and saves a checkpoint (the trainable weights, optimizer,
schedule, gradient scaler, step, stream position), and every rank reports it to Ray Train; the random
draws of a step are seeded by (seed, rank, step), so a resumed run needs no saved generator state.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from .. import storage
from ..operators.checkpoints import CheckpointError
from .config import TrainParams
from .data import REASONS
from .eraser import to_batch
from .metrics import REPORT_FILE, STATE_FILE, MetricsLog, checkpoint_name, checkpoint_step, read_progress, validate

log = logging.getLogger("pairmine")
FAIL_AT_STEP = "PAIRMINE_TRAIN_FAIL_AT_STEP"  # fault injection for tests: the first attempt fails at this step


def _seeded(generator: torch.Generator, *parts: int) -> torch.Generator:
    return generator.manual_seed(int(np.random.SeedSequence(list(parts)).generate_state(1)[0]))


def _optimizer(params: TrainParams, parameters, world: int):
    optim = params.optim
    lr = optim.learning_rate * (params.batch_size * world * params.grad_accumulation if optim.scale_lr else 1)
    return torch.optim.AdamW(parameters, lr=lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)


def _schedule(params: TrainParams, optimizer):
    from diffusers.optimization import get_scheduler

    optim = params.optim
    return get_scheduler(optim.schedule, optimizer, num_warmup_steps=optim.warmup_steps, num_training_steps=params.max_steps,
                         num_cycles=optim.cycles)


def _all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Sum (or max) of small numbers across the workers (gloo or NCCL); themselves when alone."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM)
    return tensor.tolist()


def _inject_failure(run_uri: str, step: int) -> None:
    """Fail once at PAIRMINE_TRAIN_FAIL_AT_STEP (tests of worker-failure retries); a marker makes it once per run."""
    marker = storage.join(run_uri, ".injected-failure")
    if step == int(os.environ.get(FAIL_AT_STEP, "0")) and not storage.exists(marker):
        storage.write_bytes(marker, str(step).encode())
        raise RuntimeError(f"injected failure at step {step} ({FAIL_AT_STEP})")


def train_loop(config: dict) -> dict:
    """Ray Train's ``train_loop_per_worker``: `config` is the TrainParams as JSON plus the run's facts. A
    failure is told to the driver's progress board (Ray Train then restarts the group from the last checkpoint)."""
    try:
        return _train_loop(config)
    except Exception as exc:
        if config.get("progress") is not None:
            import ray.train

            where = f"worker {ray.train.get_context().get_world_rank()}: {type(exc).__name__}: {storage.first_line(exc)}"
            config["progress"].failed.remote(where)
        raise


def _train_loop(config: dict) -> dict:
    import ray.train
    import ray.train.torch

    import pairmine  # noqa: F401  (arms the torchvision CPU shim before diffusers/peft import torchvision)

    params = TrainParams.model_validate(config["params"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if not params.scaling.use_gpu:
        torch.set_num_threads(max(1, int(params.scaling.cpus_per_worker)))
    rows_iter = _started(iter(ray.train.get_dataset_shard("train").iter_torch_batches(
        batch_size=params.batch_size, drop_last=True, local_shuffle_buffer_size=params.data.shuffle_buffer or None,
        local_shuffle_seed=params.seed + rank if params.data.shuffle_buffer else None,
    )))
    device = ray.train.torch.get_device()
    eraser = build_eraser(params, device)  # the model libraries' import and the weights' load overlap the stream's start
    optimizer = _optimizer(params, eraser.trainable_parameters(), world)
    schedule = _schedule(params, optimizer)
    amp = params.scaling.use_gpu and params.mixed_precision != "no"
    amp_dtype = torch.float16 if params.mixed_precision == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and params.mixed_precision == "fp16")
    step, position = 0, config["stream_start"]  # position: one past the last stream position trained on
    checkpoint = _start_checkpoint(ray.train.get_checkpoint(), config["run_uri"])
    if checkpoint:
        with checkpoint.as_directory() as folder:
            eraser.load_trainable(os.path.join(folder, "eraser"))
            try:
                state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=False)
            except Exception as exc:  # pickle, zip and EOF errors of a file cut short or overwritten
                name = storage.basename(checkpoint.path)
                raise CheckpointError(f"{name}/{STATE_FILE} does not load (damaged?): {type(exc).__name__}: {storage.first_line(exc)[:200]}; "
                                      f"remove the folder {name} and rerun: the run resumes from the checkpoint before it") from None
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        step, position = state["step"], state["position"]
    resumed_from, resume_position = step, position
    model = ray.train.torch.prepare_model(eraser, parallel_strategy_kwargs={"find_unused_parameters": False})
    model.train()
    metrics = MetricsLog(config["run_uri"], rank == 0, params.log_every, config.get("progress"))
    validation = config["validation"] if rank == 0 else None
    skipped = np.zeros(len(REASONS), np.int64)
    generator = torch.Generator(device=device)
    micro, window_loss, window_samples, waited, computed = 0, 0.0, 0, 0.0, 0.0
    last = time.perf_counter()
    saved = step
    while step < params.max_steps:
        started = time.perf_counter()
        try:
            rows = next(rows_iter)
        except StopIteration:  # more rows were invalid than the plan's slack: keep the steps made; the driver says so
            if step > saved:
                position = _checkpoint(params, eraser, optimizer, schedule, scaler, step, position, skipped, metrics, validation, rank)
            break
        waited += time.perf_counter() - started
        started = time.perf_counter()
        # rows before the checkpoint's position were consumed before a restart inside this fit()
        weight = (rows["valid"].bool() & (rows["position"] >= resume_position)).to(device)
        skipped += np.bincount(rows["reason"].numpy(), minlength=len(REASONS))  # [0] counts the valid rows
        if not _all_reduce([float(weight.any())], "max")[0]:
            computed += time.perf_counter() - started
            continue  # no worker has a row to learn from: not a step
        part = micro % params.grad_accumulation
        drop = np.random.default_rng([params.seed, step, part]).random() < params.condition_dropout
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            losses = model(to_batch(rows, device), drop_condition=drop, generator=_seeded(generator, params.seed, rank, step, part))
        loss = (losses * weight).sum() / weight.sum().clamp(min=1)
        scaler.scale(loss / params.grad_accumulation).backward()
        window_loss += float(loss.detach()) * int(weight.sum())
        window_samples += int(weight.sum())
        position = max(position, int(rows["position"].max()) + 1)
        micro += 1
        computed += time.perf_counter() - started
        if micro % params.grad_accumulation:
            continue
        if params.optim.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(eraser.trainable_parameters(), params.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        step += 1
        if rank == 0 and os.environ.get(FAIL_AT_STEP):
            _inject_failure(config["run_uri"], step)
        now = time.perf_counter()
        if step % params.log_every == 0 or step == params.max_steps:
            total_loss, total_samples, total_skipped = _all_reduce([window_loss, window_samples, float(skipped[1:].sum())])
            metrics.step({
                "step": step, "loss": total_loss / max(total_samples, 1), "lr": schedule.get_last_lr()[0],
                "samples_per_s": total_samples / max(now - last, 1e-9), "data_wait_s": round(waited, 4), "compute_s": round(computed, 4),
                "skipped": int(total_skipped), "position": position,
            })
            window_loss, window_samples, waited, computed, last = 0.0, 0, 0.0, 0.0, now
        if step % params.checkpoint_every == 0 or step == params.max_steps:
            position = _checkpoint(params, eraser, optimizer, schedule, scaler, step, position, skipped, metrics, validation, rank)
            saved = step
    totals = _all_reduce([float(v) for v in skipped])
    return {"steps": step, "resumed_from_step": resumed_from, "position": position,
            "skipped": {REASONS[i] or "valid": int(v) for i, v in enumerate(totals) if v}}


def build_eraser(params: TrainParams, device: torch.device):
    """The eraser to train, its new layers (SmartEraser's token MLP, OmniEraser's LoRA) drawn from the run's
    seed: a rerun of a config starts from the same weights."""
    from . import models  # diffusers, transformers, peft: imported here, after the worker started its stream

    torch.manual_seed(params.seed)
    return models.build(params.eraser, device)


def _started(batches: Iterator) -> Iterator:
    """`batches` with its first batch already being fetched, in a thread, while the worker loads its model: Ray
    Data starts a pipeline on the first request (its actors, worker processes and first reads, ~10 s on 2 cores
    before the first rows), so that start overlaps the model libraries' import and the weights' load."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="pairmine-first-rows")
    first = pool.submit(next, batches, None)
    pool.shutdown(wait=False)

    def rest() -> Iterator:
        batch = first.result()
        if batch is not None:
            yield batch
            yield from batches

    return rest()


def _start_checkpoint(reported, run_uri: str):
    """The later of Ray's checkpoint (a restarted worker group's, or one Ray restored for a rerun) and the one
    the run's progress.json committed, read as the worker group starts: a kill after an upload but before
    Ray's controller recorded it leaves only the latter, and a restart must not train over it again."""
    import ray.train

    committed = read_progress(run_uri).get("checkpoint")
    if committed is None or (reported is not None and checkpoint_step(storage.basename(reported.path)) >= checkpoint_step(committed)):
        return reported
    filesystem, path = storage.resolve(storage.join(run_uri, committed))
    return ray.train.Checkpoint(path, filesystem)


def _checkpoint(params, eraser, optimizer, schedule, scaler, step, position, skipped, metrics, validation, rank) -> int:
    """Rank 0 validates and writes the checkpoint at the workers' furthest stream position, which it returns;
    every rank reports (a barrier); then the position is recorded, so a rerun's driver starts the stream where
    this checkpoint left it."""
    import ray.train

    position = int(_all_reduce([float(position)], "max")[0])
    report = {"step": step, "position": position}
    with tempfile.TemporaryDirectory(prefix="pairmine-ckpt-") as folder:
        checkpoint = None
        if rank == 0:
            eraser.save(os.path.join(folder, "eraser"), {"resolution": params.data.resolution, "step": step,
                                                         "val_fraction": params.data.val_fraction})
            torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
                        "step": step, "position": position}, os.path.join(folder, STATE_FILE))
            if validation:
                report |= validate(eraser, validation, folder, params.seed)
            report["skipped"] = int(skipped[1:].sum())
            with open(os.path.join(folder, REPORT_FILE), "w") as f:
                json.dump(report, f, indent=2)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(report, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_name(step))
    persisted = ray.train.get_checkpoint()  # still the previous one when Ray skipped the report (another worker failed)
    if rank == 0 and persisted is not None and storage.basename(persisted.path) == checkpoint_name(step):
        metrics.checkpoint(report, checkpoint_name(step))
    return position
