"""Training throughput: the input path alone, the training step alone, and both together.

Inputs: a Syn4Removal output of SA-1B-sized records (the syn4removal_bench inputs: 2250x1500
photos, cached in --workdir), read at --resolution by the training data path.

1. Input path alone: the Ray Data stream (read committed shards, verify, decode, crop/resize, mask
   enhancement, object crop) iterated without training, from local disk and from S3 (a moto
   server on 127.0.0.1), samples/s after the first --warmup samples, on all the machine's CPUs.
2. Step alone: SmartEraser's training step on synthetic tensors of one worker's batch, one thread:
   the tiny model (64 px) and a mid-size one (UNet blocks 64/128, CLIP width 64) at --resolution;
   and each eraser's tiny model (SmartEraser, EraDiff, OmniEraser with LoRA r=4) at 64 px with its
   peak memory (each in its own process: its peak RSS). Real-size configs need a GPU: not run here.
3. Together: `pairmine train` (the same code path) with the mid-size model, one worker reserving one
   CPU and the data path on the other(s); samples/s from its step metrics over the second epoch
   (the first one starts Ray Data's workers), as a ratio to step alone. The target is >= 0.9.

    .venv/bin/python benchmarks/train_bench.py [--images 96] [--resolution 128] [--workdir /tmp/pairmine-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tiny-model builders of the tests

import numpy as np  # noqa: E402
import torch  # noqa: E402
from models import tiny_eradiff, tiny_omnieraser, tiny_smarteraser  # noqa: E402
from syn4removal_bench import make_inputs  # noqa: E402

from pairmine import dataset, storage  # noqa: E402
from pairmine.operators.mask_enhance import MaskEnhanceParams  # noqa: E402
from pairmine.training.config import RELEASE_MASK_MODES  # noqa: E402
from pairmine.training.data import Preparation, decode_rows, plan_stream, shard_stream  # noqa: E402
from pairmine.training import models as erasers  # noqa: E402
from pairmine.training.erasers import ERASERS, SmartEraserParams  # noqa: E402
from pairmine.training.metrics import read_step_metrics  # noqa: E402

BATCH = 4


def syn_output(workdir: Path, images: int) -> Path:
    out = workdir / f"train-syn-{images}"
    if not (out / "_SUCCESS").exists():
        inputs = make_inputs(workdir, images)
        subprocess.run([str(Path(sys.executable).with_name("pairmine")), "syn4removal", "--input", str(inputs), "--output", str(out),
                        "--no-progress", "--set", "pairing.pairs_per_background=2", "--set", "shards.max_samples=64"], check=True)
    return out


def input_path(output: str, resolution: int, clip: int, warmup: int, samples: int) -> float:
    """Samples/s of the decoded stream alone, after `warmup` samples."""
    import ray

    from pairmine.pipelines.runtime import io_concurrency

    shards = dataset.committed_shards(output)
    stream = plan_stream([(1.0, shards)], 0, 0.0, warmup + samples)
    prep = Preparation(resolution, clip, 1.25, MaskEnhanceParams(modes=RELEASE_MASK_MODES), 0)
    rows = shard_stream(stream, 0, 0.0, io_concurrency()).map_batches(decode_rows, fn_kwargs={"prep": prep}, batch_size=8, batch_format="numpy")
    seen, started = 0, None
    for batch in rows.iter_batches(batch_size=BATCH, batch_format="numpy"):
        seen += len(batch["valid"])
        if started is None and seen >= warmup:
            started, counted = time.perf_counter(), seen
    ray.data.DataContext.get_current()  # keep the session for the next measurement
    return (seen - counted) / (time.perf_counter() - started)


def step_alone(parts: dict, resolution: int, steps: int = 12, name: str = "smarteraser") -> float:
    """Samples/s of the training step (forward, backward, AdamW) on synthetic tensors, one thread."""
    torch.set_num_threads(1)
    extra = {"lora_rank": 4, "lora_alpha": 4} if name == "omnieraser" else {}
    eraser = erasers.build(ERASERS[name](**parts, **extra), torch.device("cpu"))
    optimizer = torch.optim.AdamW(eraser.trainable_parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(BATCH, 1, resolution, resolution)
    mask[:, :, resolution // 4 : resolution // 2, resolution // 4 : resolution // 2] = 1
    batch = {"source": torch.rand(BATCH, 3, resolution, resolution) * 2 - 1, "target": torch.rand(BATCH, 3, resolution, resolution) * 2 - 1,
             "mask": mask, "alpha": mask}
    if getattr(eraser, "clip_size", 0):
        batch["clip"] = torch.randint(0, 256, (BATCH, 3, eraser.clip_size, eraser.clip_size), dtype=torch.uint8)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        eraser(batch, generator=g).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return BATCH / float(np.median(times[2:]))


def _measure_eraser(name: str, parts: dict, queue) -> None:
    import resource

    import pairmine  # noqa: F401  (the torchvision shim)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rate = step_alone(parts, 64, name=name)
    queue.put((rate, round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), round(before / 1024, 1)))


def eraser_steps(workdir: Path) -> dict:
    """Each eraser's tiny model at 64 px: samples/s and the process's peak RSS, each in a fresh process."""
    import multiprocessing

    built = {"smarteraser": tiny_smarteraser(workdir / "tiny-smarteraser"), "eradiff": tiny_eradiff(workdir / "tiny-eradiff"),
             "omnieraser": tiny_omnieraser(workdir / "tiny-omnieraser")}
    context, found = multiprocessing.get_context("spawn"), {}
    for name, parts in built.items():
        queue = context.Queue()
        process = context.Process(target=_measure_eraser, args=(name, parts, queue))
        process.start()
        rate, peak, imported = queue.get(timeout=600)
        process.join()
        found[name] = {"samples_per_s": round(rate, 2), "step_ms": round(BATCH / rate * 1000, 1), "peak_rss_mb": peak,
                       "rss_after_imports_mb": imported}
    return found


def together(output: Path, parts: dict, resolution: int, workdir: Path, epochs: float) -> tuple[float, dict]:
    """Samples/s of `pairmine train` (1 worker, 1 CPU) over its second epoch, and its summary."""
    import yaml

    from pairmine.training.run import train

    samples = sum(s.samples for s in dataset.committed_shards(str(output)))
    steps = int(epochs * samples / BATCH)
    config = {"batch_size": BATCH, "max_steps": steps, "mixed_precision": "no", "eraser": {"name": "smarteraser", **parts},
              "data": {"sources": [{"output": str(output)}], "resolution": resolution, "val_fraction": 0.0, "val_samples": 0},
              "storage": str(workdir / "train-runs"), "name": f"bench-{time.time_ns()}", "checkpoint_every": steps, "log_every": 5,
              "scaling": {"num_workers": 1, "cpus_per_worker": 1.0}}
    path = workdir / "train-bench.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = train(str(path), progress_bars=False)
    lines = read_step_metrics(summary["run"])
    second = [m for m in lines if m["position"] > samples]
    return float(np.median([m["samples_per_s"] for m in second])), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=2.2)
    parser.add_argument("--workdir", default="/tmp/pairmine-bench")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    output = syn_output(workdir, args.images)
    samples = sum(s.samples for s in dataset.committed_shards(str(output)))
    tiny = tiny_smarteraser(workdir / "tiny-smarteraser")
    mid = tiny_smarteraser(workdir / "mid-smarteraser", width=64, blocks=(64, 128))
    report = {"samples": samples, "resolution": args.resolution, "batch_per_worker": BATCH}
    report["step_alone_samples_per_s"] = {"tiny_64px": round(step_alone(tiny, 64), 2), f"mid_{args.resolution}px": round(step_alone(mid, args.resolution), 2)}
    report["erasers_tiny_64px_cpu"] = eraser_steps(workdir)

    import ray

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    for path in output.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"s3://bench/syn/{path.relative_to(output)}", path.read_bytes())
    ray.init(include_dashboard=False, logging_level="ERROR", runtime_env={"env_vars": {k: os.environ[k] for k in os.environ if k.startswith("AWS_")},
             "worker_process_setup_hook": "pairmine.pipelines.runtime.setup_worker"})
    clip = SmartEraserParams(**mid).object_crop_size()
    report["input_path_samples_per_s"] = {
        where: round(input_path(uri, args.resolution, clip, args.warmup, samples), 2) for where, uri in (("local", str(output)), ("s3", "s3://bench/syn"))
    }
    rate, summary = together(output, mid, args.resolution, workdir, args.epochs)
    step = report["step_alone_samples_per_s"][f"mid_{args.resolution}px"]
    report["together_samples_per_s"] = round(rate, 2)
    report["together_ratio_to_step_alone"] = round(rate / step, 3)
    report["together_run"] = {k: summary[k] for k in ("steps", "wall_seconds", "metrics")}
    print(json.dumps(report, indent=2))
    print(f"\ninput path alone ({os.cpu_count()} CPUs): {report['input_path_samples_per_s']['local']} samples/s local, "
          f"{report['input_path_samples_per_s']['s3']} from S3")
    print(f"training step alone (1 thread): tiny 64 px {report['step_alone_samples_per_s']['tiny_64px']} samples/s, "
          f"mid {args.resolution} px {step} samples/s")
    print(f"together (1 worker + the data path, second epoch): {rate:.2f} samples/s = {rate / step:.2f} of step alone (target >= 0.9)")
    for name, row in report["erasers_tiny_64px_cpu"].items():
        print(f"{name} tiny, 64 px, batch {BATCH}, CPU: {row['step_ms']} ms/step ({row['samples_per_s']} samples/s), peak RSS {row['peak_rss_mb']} MB")
    ray.shutdown()
    server.stop()


if __name__ == "__main__":
    main()
