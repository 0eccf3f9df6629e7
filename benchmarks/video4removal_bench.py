"""Video4Removal throughput against the decode bound, with 1 and 2 Ray workers; decord vs PyAV.

Inputs: --copies copies of the seven sample clips (720p demo clips, 540p synthetic clips, 272p and
QCIF hand-held clips), so that both CPUs have segments to work on.

Bound, measured in the same run on the same videos: decoding alone, in one process, every
`stride`-th frame scaled to the analysis long side (the pipeline's analysis pass) with the
default reader, before and after the Ray runs (their mean; the drift says how much the machine's
speed moved); the same with the other reader gives the decord vs PyAV comparison. The pipeline
runs the real code path (run()) on an embedded Ray with 1, then 2 CPUs, the whole process tree
pinned to that many cores; analysed frames per second per core are divided by the bound's analysed
frames per second (one core). The same per-segment work without Ray (one core) separates the
operators' cost from what Ray adds on this machine.

Region mining (`region.mode`): the per-segment work without Ray, one core, in frame, region and auto
mode, on the sample clips and on real static-camera footage: OpenCV's `vtest.avi` (people walking
across a plaza, 768x576, 10 fps, 795 frames), taken from Debian's `opencv-doc` package (Apache-2.0 AND
BSD-3-Clause; fetched with `apt-get download` into --workdir when missing), each against its own
decode bound. The region target is >= 0.5 of the bound per core.

    .venv/bin/python benchmarks/video4removal_bench.py [--copies 8] [--workdir /tmp/pairmine-video-bench] [--no-real]
"""

from __future__ import annotations

import os

# One BLAS thread, as in Ray's workers (OMP_NUM_THREADS=1), for the in-process rows: on a pinned core an
# idle OpenBLAS thread busy-waits next to the work (it halved the full-resolution row without Ray).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
from common import fixed_cost, pinned, print_fixed_cost, print_profile, timed_run

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


def without_ray(videos: list[Path], mode: str = "auto") -> tuple[int, float, int]:
    """(analysed frames, seconds, pairs) of the same per-segment work in this process, one core."""
    config = Video4RemovalConfig(region={"mode": mode})
    digest = config_hash(config)
    frames, pairs, start = 0, 0, time.perf_counter()
    for video in videos:
        info = probe(str(video), config.decode)
        segments = split_video(info, config)
        for first, stop in segments:
            samples, _, stats = process_segment(video.name, str(video), first, stop, config, digest)
            frames += stats.counts["frames"]
            pairs += len(samples)
    return frames, time.perf_counter() - start, pairs


def real_footage(workdir: Path) -> Path | None:
    """OpenCV's vtest.avi from Debian's opencv-doc package (cached in workdir); None when apt cannot fetch it."""
    target = workdir / "real" / "vtest.avi"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as folder:
        try:
            subprocess.run(["apt-get", "download", "opencv-doc"], cwd=folder, check=True, capture_output=True, timeout=600)
            package = next(Path(folder).glob("opencv-doc_*.deb"))
            subprocess.run(["dpkg", "-x", str(package), folder], check=True, capture_output=True)
        except (OSError, subprocess.SubprocessError, StopIteration) as exc:
            print(f"no real footage: {exc}")
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(folder) / "usr/share/doc/opencv-doc/examples/data/vtest.avi", target)
    return target


def modes(videos: list[Path], params: DecodeParams) -> dict:
    """Analysed frames/s, ratio to the decode bound and pairs/min of each region mode, without Ray, one core."""
    frames, seconds = decode_bound(videos, params.reader, params)
    bound = frames / seconds
    found = {"bound_frames_per_s": round(bound, 1)}
    for mode in ("frame", "region", "auto"):
        analysed, spent, pairs = without_ray(videos, mode)
        found[mode] = {"frames_per_s": round(analysed / spent, 1), "ratio_to_bound": round(analysed / spent / bound, 3),
                       "pairs": pairs, "pairs_per_minute": round(pairs / spent * 60, 1)}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--workdir", default="/tmp/pairmine-video-bench")
    parser.add_argument("--no-real", action="store_true", help="skip the real footage (no apt)")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    inputs = make_inputs(workdir, args.copies)
    videos = sorted(inputs.rglob("*.mp4"))
    warmup = [str(VIDEOS / "synth_static_dev.mp4"), str(VIDEOS / "synth_pan_dev.mp4")]  # one task per CPU
    cv2.setNumThreads(1)  # like the pipeline's workers
    params = DecodeParams()
    with pinned(1):  # the bound before and after the Ray runs (the machine's speed drifts): ratios use the mean
        decode_bound(videos[:1], params.reader, params)  # a warm-up: the decoder's first use costs more
        first_frames, first_s = decode_bound(videos, params.reader, params)
    results = {cpus: timed_run(VIDEO4REMOVAL, [str(inputs)], warmup, workdir / f"out-{cpus}", cpus) for cpus in (1, 2)}

    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])  # the bound and the work without Ray on one core
    readers = {name: decode_bound(videos, name, params) for name in ("pyav", "decord")}
    before, after = first_frames / first_s, readers[params.reader][0] / readers[params.reader][1]
    bound_rate = (before + after) / 2
    alone_frames, alone_s, _ = without_ray(videos)
    report = {"videos": len(videos), "stride": params.stride, "analysis_long_side": params.analysis_long_side,
              "bound_reader": params.reader, "bound_frames_per_s_per_core": round(bound_rate, 1),
              "bound_before_after": [round(before, 1), round(after, 1)],
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
            "cpu_profile": result["cpu_profile"],
        }
    report["speedup_1_to_2"] = round(report["1_cpu"]["wall_s"] / report["2_cpu"]["wall_s"], 3)
    report["fixed_cost_1_cpu"] = fixed_cost(VIDEO4REMOVAL, warmup[:1], workdir / "fixed", 1)
    report["modes_sample_clips"] = modes(sorted(VIDEOS.glob("*.mp4")), params)
    real = None if args.no_real else real_footage(workdir)
    if real:
        report["modes_vtest"] = modes([real], params)
    print(json.dumps(report, indent=2))
    print(f"\nbound ({params.reader} decode alone, stride {params.stride}, {params.analysis_long_side} px, 1 core): "
          f"{bound_rate:.0f} analysed frames/s (before the Ray runs {before:.0f}, after {after:.0f}: the machine drifted "
          f"{after / before - 1:+.0%}); decord {report['decode_frames_per_s']['decord']:.0f}, PyAV {report['decode_frames_per_s']['pyav']:.0f} frames/s")
    print(f"the same per-segment work without Ray (1 core): {report['without_ray_frames_per_s']:.0f} frames/s "
          f"= {report['without_ray_ratio_to_bound']:.2f} of the bound")
    for cpus in (1, 2):
        r = report[f"{cpus}_cpu"]
        print(f"{cpus} Ray CPU(s): {r['frames_per_s_per_core']:.0f} frames/s/core = {r['ratio_to_bound_per_core']:.2f} of the bound; "
              f"{r['pairs_per_minute']:.1f} pairs/min; peak worker RSS {r['peak_worker_rss_mb']} MB")
        print_profile(cpus, r["cpu_profile"])
    print(f"speed-up 1 -> 2 CPUs: {report['speedup_1_to_2']:.2f}x")
    print_fixed_cost(report["fixed_cost_1_cpu"], "one sample clip")
    for name in ("modes_sample_clips", "modes_vtest"):
        if name in report:
            row = report[name]
            print(f"{name[6:]} (without Ray, 1 core; bound {row['bound_frames_per_s']:.0f} frames/s): " + "; ".join(
                f"{mode} {row[mode]['ratio_to_bound']:.2f} of the bound, {row[mode]['pairs']} pairs ({row[mode]['pairs_per_minute']:.0f}/min)"
                for mode in ("frame", "region", "auto")))


if __name__ == "__main__":
    main()
