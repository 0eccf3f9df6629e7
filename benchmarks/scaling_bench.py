"""Past two cores: both pipelines at 1, 2, 4, 8 and 16 Ray workers, and the GPU model stages' busy fraction.

For a many-core machine (the 16-core GPU machine lent to some sessions), in one call of under 10 minutes:

- **Scaling**: Syn4Removal on SA-1B-sized tars (syn4removal_bench's inputs, 48 images per worker) and
  Video4Removal on copies of the sample clips (one set per worker), each on an embedded Ray pinned to N
  cores (benchmarks/common.py), N in --workers capped at the cores present. The work grows with N, so
  each row takes about as long; efficiency = rate(N) / (N x rate(1)), the share of linear scaling kept.
  Next to each row, the machine's own scaling on the same work: N processes, one per core, each running
  one worker's share through the per-group / per-segment functions without Ray (the benchmarks' "work
  without Ray"), started together; what Ray keeps of it is the row's rate over that one.
- **GPU stages** (with --gpu, when torch sees CUDA), for each --precision: the GroundingDINO SwinT + SAM2
  hiera-t masker called directly on the candidates of three sample clips (region crops of several sizes,
  whole frames; model_stages_bench.masker_profile: ms per frame of each part, torch's profiler's top ops);
  then Syn4Removal with the CLIP ViT-B-32 scorer and Video4Removal with that masker (random weights, the
  libraries' real configs), each stage's n actors sharing the GPU (num_gpus 1/n, n in --actors) fed by the
  CPU workers, the masker's calls sized as configs/video4removal_gpu.yaml sizes them (batch_size,
  rows_per_call, actor_cpus): items/s, the actors' busy fraction and model load from the run summary.

    .venv/bin/python benchmarks/scaling_bench.py [--workers 1,2,4,8,16] [--no-machine] [--gpu] [--precision fp16,bf16]
        [--actors 1,4] [--gpu-pipelines syn4removal,video4removal]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from pathlib import Path

import yaml

from common import timed_run
from syn4removal_bench import SAMPLE_TAR, make_inputs as make_sa1b, without_ray as syn_alone
from video4removal_bench import VIDEOS, make_inputs as make_videos, without_ray as video_alone

from pairmine.operators.video4removal import Video4RemovalParams, analyse_segment
from pairmine.pipelines.syn4removal import SYN4REMOVAL
from pairmine.pipelines.video4removal import VIDEO4REMOVAL

WARMUP_VIDEOS = [str(VIDEOS / "synth_static_dev.mp4"), str(VIDEOS / "synth_pan_dev.mp4")]
GPU_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "video4removal_gpu.yaml"
GPU_CALLS = {k: v for k, v in yaml.safe_load(GPU_CONFIG.read_text())["masker"].items() if k in ("batch_size", "rows_per_call", "actor_cpus")}


def _share_alone(name: str, inputs: str, core: int, start, results) -> None:
    """One worker's share without Ray, on `core` (a spawned process): puts (items done, seconds)."""
    import cv2

    os.sched_setaffinity(0, {core})
    cv2.setNumThreads(1)  # like the pipeline's workers
    start.wait()
    if name == "syn4removal":
        results.put(syn_alone(Path(inputs), {}))
    else:
        frames, seconds, _ = video_alone(sorted(Path(inputs).rglob("*.mp4")))
        results.put((frames, seconds))


def alone(name: str, shares: list[str]) -> float:
    """Items/s of one share per process, all started together, one process per core: the machine's own scaling."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(len(shares)), context.Queue()
    cores = sorted(os.sched_getaffinity(0))
    processes = [context.Process(target=_share_alone, args=(name, share, cores[k], start, results)) for k, share in enumerate(shares)]
    for process in processes:
        process.start()
    done = [results.get() for _ in processes]
    for process in processes:
        process.join()
    return sum(items for items, _ in done) / max(seconds for _, seconds in done)


def scaling(workdir: Path, workers: list[int], machine: bool) -> dict:
    """Throughput per pipeline and worker count, and the efficiency against 1 worker (and the machine's own)."""
    rows: dict[str, dict[int, dict]] = {"syn4removal": {}, "video4removal": {}}
    syn_share, video_share = make_sa1b(workdir, 48), make_videos(workdir, 1)
    for n in workers:
        syn = timed_run(SYN4REMOVAL, [str(make_sa1b(workdir, 48 * n))], [str(SAMPLE_TAR)] * n, workdir / f"syn-{n}", n,
                        ["shards.max_samples=100"], ["group_size=2"])
        video = timed_run(VIDEO4REMOVAL, [str(make_videos(workdir, n))], WARMUP_VIDEOS * n, workdir / f"video-{n}", n)
        for name, result, unit, share in (("syn4removal", syn, "samples", syn_share), ("video4removal", video, "frames", video_share)):
            summary = result["summary"]
            done = summary["written"]["samples"] if unit == "samples" else summary["counts"]["frames"]
            row = rows[name][n] = {"per_s": round(done / summary["wall_seconds"], 3), "unit": "triplets" if unit == "samples" else "analysed frames",
                                   "wall_s": summary["wall_seconds"], "peak_worker_rss_mb": result["peak_worker_rss_mb"],
                                   "cores": {k: v["share_of_cores"] for k, v in result["cpu_profile"].items() if v["share_of_cores"] >= 0.01}}
            if machine:
                row["without_ray_per_s"] = round(alone(name, [str(share)] * n), 3)
                row["of_without_ray"] = round(row["per_s"] / row["without_ray_per_s"], 3)
            print(f"{name}, {n} workers: {json.dumps(row)}", flush=True)  # kept if a later row runs out of time
    base = min(workers)
    for per_n in rows.values():
        for n, row in per_n.items():
            row["efficiency_vs_linear"] = round(row["per_s"] / (per_n[base]["per_s"] * n / base), 3)
            if machine:
                row["machine_efficiency_vs_linear"] = round(row["without_ray_per_s"] / (per_n[base]["without_ray_per_s"] * n / base), 3)
    return rows


def gpu_stages(workdir: Path, precisions: list[str], cpus: int, actors: list[int], pipelines: list[str]) -> dict:
    """End to end with each model stage's actors sharing the GPU (num_gpus 1/n for n in `actors`): items/s and
    the actors' busy fraction; first, per precision, the masker called directly (where a call's time goes).
    Models and inputs are made only for the pipelines asked for."""
    from model_stages_bench import masker_profile, real_size_gdino_sam2, vit_b32

    runs = {}  # name: (pipeline, inputs, warm-up inputs, stage, its config section, its settings)
    if "syn4removal" in pipelines:
        model, checkpoint = vit_b32(workdir / "clip-b32")
        scorer = ["name=clip", f"model={model}", f"checkpoint={checkpoint}", "scale=cosine", "threshold=-1", "batch_size=64"]
        runs["syn4removal+clip_vit_b32"] = (SYN4REMOVAL, [str(make_sa1b(workdir, 48 * cpus))], [str(SAMPLE_TAR)], "score", "entities.scorer", scorer)
    if "video4removal" in pipelines:
        models = real_size_gdino_sam2(workdir / "gdino-sam2")
        # random weights score boxes low: a threshold of 0.05 gives SAM2 boxes to segment, as on real footage;
        # the calls sized as configs/video4removal_gpu.yaml sizes them
        masker = ["name=gdino_sam2", "box_threshold=0.05", *(f"{k}={v}" for k, v in {**models, **GPU_CALLS}.items())]
        runs["video4removal+gdino_swint_sam2_hiera_t"] = (VIDEO4REMOVAL, [str(make_videos(workdir, max(1, cpus // 2)))], WARMUP_VIDEOS,
                                                          "mask", "masker", masker)
        # the candidates of three clips: region crops of several sizes and whole 960x540 frames, as the pipeline sends them
        segments = [analyse_segment("static", str(VIDEOS / clip), 0, 300, Video4RemovalParams())
                    for clip in ("01_dog.mp4", "synth_crowd_dev.mp4", "synth_static_dev.mp4")]
        frames = [candidate.mask_input() for segment in segments for candidate in segment.candidates] * 3
    report = {}
    for precision in precisions:
        if "video4removal" in pipelines:
            profile = masker_profile(models, frames, GPU_CALLS["batch_size"], precision=precision, box_threshold=0.05)
            print(f"{precision} masker profile: {json.dumps(profile)}", flush=True)
        for n in actors:
            for name, (pipeline, inputs, warmup, stage, section, settings) in runs.items():
                changes = (*settings, f"precision={precision}", f"num_gpus={1 / n:.4g}", f"concurrency=[{n},{n}]")
                overrides = [f"{section}.{change}" for change in changes]
                result = timed_run(pipeline, inputs, warmup, workdir / f"gpu-{name}-{precision}-{n}", cpus, overrides, overrides)
                summary = result["summary"]
                row = report.setdefault(precision, {}).setdefault(f"{n} actors", {})[name] = {
                    "per_s": summary["samples_per_second"], "wall_s": summary["wall_seconds"], **summary["stages"].get(stage, {})}
                # where the time went: the stages' CPU seconds and each kind of process's share of the cores
                print(f"{precision}, {n} actors per GPU, {name}: {json.dumps(row)}; stages {json.dumps(summary['stages'])}; cores "
                      f"{json.dumps({k: v['share_of_cores'] for k, v in result['cpu_profile'].items() if v['share_of_cores'] >= 0.005})}", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4,8,16", help="worker counts (capped at the cores present; empty: no scaling rows)")
    parser.add_argument("--gpu", action="store_true", help="also the GPU model stages (needs CUDA)")
    parser.add_argument("--no-machine", action="store_true", help="skip the machine's own scaling (the same work without Ray)")
    parser.add_argument("--precision", default="fp16,bf16")
    parser.add_argument("--actors", default="1,2", help="GPU rows: actors sharing the GPU (num_gpus 1/n); 2 is configs/video4removal_gpu.yaml")
    parser.add_argument("--gpu-pipelines", default="syn4removal,video4removal", help="GPU rows: which pipelines")
    parser.add_argument("--workdir", default="/tmp/pairmine-scaling")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    workers = sorted({n for n in (int(w) for w in args.workers.split(",") if w) if n <= cores})
    workdir = Path(args.workdir)
    report = {"cores": cores, "scaling": scaling(workdir, workers, not args.no_machine) if workers else {}}
    if args.gpu:
        import torch

        report["gpu"] = gpu_stages(workdir, args.precision.split(","), cores,
                                   [int(n) for n in args.actors.split(",")], args.gpu_pipelines.split(",")) if torch.cuda.is_available() else "no CUDA device"
    print(json.dumps(report, indent=2))
    for name, per_n in report["scaling"].items():
        print(f"{name}: " + ", ".join(f"{n} workers {r['per_s']} {r['unit']}/s ({r['efficiency_vs_linear']:.2f} of linear"
                                      + (f"; without Ray {r['without_ray_per_s']}, {r['machine_efficiency_vs_linear']:.2f} of linear" if "without_ray_per_s" in r else "")
                                      + ")" for n, r in per_n.items()))
    if isinstance(report.get("gpu"), dict):
        for precision, by_actors in report["gpu"].items():
            for actors, rows in by_actors.items():
                for name, row in rows.items():
                    print(f"{precision}, {actors} per GPU, {name}: {row['per_s']}/s, actor busy {row.get('actor_busy_fraction')}")


if __name__ == "__main__":
    main()
