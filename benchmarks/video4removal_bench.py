"""Video4Removal throughput against the decode bound, with 1 and 2 Ray workers; decord vs PyAV.

Inputs: --copies copies of the seven sample clips (720p demo clips, 540p synthetic clips, 272p and
QCIF hand-held clips), so that both CPUs have segments to work on.

Bound, measured in the same run on the same videos: decoding alone, in one process, every
`stride`-th frame scaled to the analysis long side (the pipeline's analysis pass) with the
default reader; the same with the other reader gives the decord vs PyAV comparison. The pipeline
runs the real code path (run()) on an embedded Ray with 1, then 2 CPUs, the whole process tree
pinned to that many cores; analysed frames per second per core are divided by the bound's analysed
frames per second (one core). The same per-segment work without Ray (one core) separates the
operators' cost from what Ray adds on this machine.

    .venv/bin/python benchmarks/video4removal_bench.py [--copies 8] [--workdir /tmp/pairmine-video-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import cv2
from common import timed_run

from pairmine.operators.video4removal import process_segment, split_video
from pairmine.operators.video_io import DecodeParams, analysis_size, probe, read_frames
from pairmine.pipelines.config import config_hash
from pairmine.pipelines.video4removal import VIDEO4REMOVAL, Video4RemovalConfig

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "video"


def make_inputs(workdir: Path, copies: int) -> Path:
    folder = workdir / f"videos-{copies}"
    if not folder.exists():
        for k in range(copies):
            (folder / f"copy{k}").mkdir(parents=True)
            for clip in sorted(VIDEOS.glob("*.mp4")):
                shutil.copy(clip, folder / f"copy{k}" / clip.name)
    return folder


def decode_bound(videos: list[Path], reader: str, params: DecodeParams) -> tuple[int, float]:
    """(analysed frames, seconds) to decode every stride-th frame at analysis size, one core."""
    frames, start = 0, time.perf_counter()
    for video in videos:
        info = probe(str(video), params)
        size = analysis_size(info.width, info.height, params.analysis_long_side)
        frames += len(read_frames(str(video), range(0, info.frames, params.stride), (reader,), size, params.threads).frames)
    return frames, time.perf_counter() - start


def without_ray(videos: list[Path]) -> tuple[int, float]:
    """(analysed frames, seconds) of the same per-segment work in this process, one core."""
    config = Video4RemovalConfig()
    digest = config_hash(config)
    frames, start = 0, time.perf_counter()
    for video in videos:
        info = probe(str(video), config.decode)
        for first, stop in split_video(info, config):
            frames += process_segment(video.name, str(video), first, stop, config, digest)[2].counts["frames"]
    return frames, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--workdir", default="/tmp/pairmine-video-bench")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    inputs = make_inputs(workdir, args.copies)
    videos = sorted(inputs.rglob("*.mp4"))
    warmup = [str(VIDEOS / "synth_static_dev.mp4"), str(VIDEOS / "synth_pan_dev.mp4")]  # one task per CPU
    results = {cpus: timed_run(VIDEO4REMOVAL, [str(inputs)], warmup, workdir / f"out-{cpus}", cpus) for cpus in (1, 2)}

    cv2.setNumThreads(1)  # like the pipeline's workers
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])  # the bound on one core
    params = DecodeParams()
    readers = {name: decode_bound(videos, name, params) for name in ("pyav", "decord")}
    bound_frames, bound_s = readers[params.reader]
    bound_rate = bound_frames / bound_s
    alone_frames, alone_s = without_ray(videos)
    report = {"videos": len(videos), "stride": params.stride, "analysis_long_side": params.analysis_long_side,
              "bound_reader": params.reader, "bound_frames_per_s_per_core": round(bound_rate, 1),
              "decode_frames_per_s": {name: round(f / s, 1) for name, (f, s) in readers.items()},
              "without_ray_frames_per_s": round(alone_frames / alone_s, 1),
              "without_ray_ratio_to_bound": round(alone_frames / alone_s / bound_rate, 3)}
    for cpus, result in results.items():
        summary = result["summary"]
        frames, wall = summary["counts"]["frames"], summary["wall_seconds"]
        report[f"{cpus}_cpu"] = {
            "analysed_frames": frames,
            "wall_s": wall,
            "frames_per_s_per_core": round(frames / wall / cpus, 1),
            "ratio_to_bound_per_core": round(frames / wall / cpus / bound_rate, 3),
            "pairs": summary["written"]["samples"],
            "pairs_per_minute": round(summary["written"]["samples"] / wall * 60, 1),
            "peak_worker_rss_mb": result["peak_worker_rss_mb"],
            "stages_cpu_s": {k: v["cpu_seconds"] for k, v in summary["stages"].items()},
        }
    report["speedup_1_to_2"] = round(report["1_cpu"]["wall_s"] / report["2_cpu"]["wall_s"], 3)
    print(json.dumps(report, indent=2))
    print(f"\nbound ({params.reader} decode alone, stride {params.stride}, {params.analysis_long_side} px, 1 core): "
          f"{bound_rate:.0f} analysed frames/s; decord {report['decode_frames_per_s']['decord']:.0f}, "
          f"PyAV {report['decode_frames_per_s']['pyav']:.0f} frames/s")
    print(f"the same per-segment work without Ray (1 core): {report['without_ray_frames_per_s']:.0f} frames/s "
          f"= {report['without_ray_ratio_to_bound']:.2f} of the bound")
    for cpus in (1, 2):
        r = report[f"{cpus}_cpu"]
        print(f"{cpus} Ray CPU(s): {r['frames_per_s_per_core']:.0f} frames/s/core = {r['ratio_to_bound_per_core']:.2f} of the bound; "
              f"{r['pairs_per_minute']:.1f} pairs/min; peak worker RSS {r['peak_worker_rss_mb']} MB")
    print(f"speed-up 1 -> 2 CPUs: {report['speedup_1_to_2']:.2f}x")


if __name__ == "__main__":
    main()
