"""Syn4Removal throughput against the codec bound, with 1 and 2 Ray workers.

Inputs: SA-1B-sized records made from the five good records of the shared sample tar: each photo
is resized to 2250x1500 (JPEG q90), each of its masks is resized with it (nearest) and, to reach
~100 masks per image like SA-1B, every mask also contributes its left and right halves as extra
part masks (SAM's multi-granularity), with scores drawn like the originals'. The records are
written into SA-1B tars of --images records.

Bound, measured in the same run on the same data: decoding every input JPEG once plus encoding
every written output (source.jpg, target.jpg, mask.png, alpha.png) with the pipeline's encoders,
in one process on one core; measured before and after the Ray runs and averaged (the drift between
the two says how much the machine's speed moved during the run). The pipeline runs the real CLI code path (run()) on an embedded Ray with
1, then 2 CPUs, the whole process tree pinned to that many cores; triplets/s per core is divided by
the bound's triplets/s to give the ratio. The same per-group work without Ray (read, decode, compose,
encode, pack; one core) separates the operators' cost from what Ray adds on this machine.

With --resize-short-side N (e.g. 512, the SmartEraser release's size) the run keeps backgrounds at that
short side; the bound then decodes at the DCT scale the pipeline decodes at (1/2 for 1500 -> 512) and
encodes outputs of that size.

    .venv/bin/python benchmarks/syn4removal_bench.py [--images 480] [--resize-short-side 512] [--blending feather] [--workdir /tmp/pairmine-bench]
"""

from __future__ import annotations

import os

# One BLAS thread, as in Ray's workers (OMP_NUM_THREADS=1), for the in-process rows: on a pinned core an
# idle OpenBLAS thread busy-waits next to the work (it halved the full-resolution row without Ray).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import io
import json
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
from common import fixed_cost, pinned, print_fixed_cost, print_profile, timed_run
from pycocotools import mask as mask_utils

from pairmine.operators.codecs import decode_image, encode_jpeg, encode_png_gray, splice_jpeg_rows
from pairmine.pipelines.config import config_hash
from pairmine.pipelines.inputs import unit_groups
from pairmine.pipelines.readers import tar_items
from pairmine.pipelines.syn4removal import SYN4REMOVAL, Syn4RemovalConfig, extract, finish

SAMPLE_TAR = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "sa1b" / "sa_000000.tar"
GOOD = ("sa_100", "sa_101", "sa_102", "sa_103", "sa_142238")
WIDTH, HEIGHT = 2250, 1500


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode("ascii")}


def sa1b_sized_record(jpg: bytes, doc: dict, rng: np.random.Generator) -> tuple[bytes, dict]:
    """Upscale one sample record to 2250x1500 with about 3x its masks (wholes and halves)."""
    image = cv2.resize(cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR), (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    annotations = []
    for ann in doc["annotations"]:
        small = mask_utils.decode(ann["segmentation"])
        mask = cv2.resize(small, (WIDTH, HEIGHT), interpolation=cv2.INTER_NEAREST)
        x, _, w, _ = cv2.boundingRect(mask)
        parts = [mask]
        for lo, hi in ((x, x + w // 2), (x + w // 2, x + w)):
            half = np.zeros_like(mask)
            half[:, lo:hi] = mask[:, lo:hi]
            if half.any():
                parts.append(half)
        for i, part in enumerate(parts):
            scores = {k: ann[k] if i == 0 else float(np.clip(ann[k] + rng.normal(0, 0.03), 0, 1)) for k in ("predicted_iou", "stability_score")}
            rle = _rle(part)
            annotations.append({"id": len(annotations), "segmentation": rle, "area": int(mask_utils.area(rle)),
                                "bbox": [float(v) for v in mask_utils.toBbox(rle)], **scores})
    return encode_jpeg(image, 90), {"image": {"width": WIDTH, "height": HEIGHT}, "annotations": annotations}


def make_inputs(workdir: Path, images: int) -> Path:
    """Tars of `images` SA-1B-sized records (cached in workdir)."""
    folder = workdir / f"sa1b-{images}"
    if folder.exists():
        return folder
    with tarfile.open(SAMPLE_TAR) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.split(".")[0] in GOOD}
    rng = np.random.default_rng(0)
    records = [sa1b_sized_record(members[f"{s}.jpg"], json.loads(members[f"{s}.json"]), rng) for s in GOOD]
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    per_tar = 80
    for t in range(0, images, per_tar):
        with tarfile.open(tmp / f"sa_{t // per_tar:06d}.tar", "w") as out:
            for i in range(t, min(t + per_tar, images)):
                jpg, doc = records[i % len(records)]
                doc = doc | {"image": doc["image"] | {"image_id": i, "file_name": f"sa_{i}.jpg"}}
                for name, data in ((f"sa_{i}.jpg", jpg), (f"sa_{i}.json", json.dumps(doc).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    out.addfile(info, io.BytesIO(data))
    tmp.rename(folder)
    return folder


def codec_bound(inputs: Path, quality: int, short_side: int | None = None, encodes: int = 64) -> tuple[float, float]:
    """(seconds to decode every input JPEG once, seconds to encode one triplet of the inputs' size (or resized
    to `short_side`: the inputs then decoded at the DCT scale the pipeline uses) the way the pipeline does:
    the source as the target's JPEG with a paste's rows, here 4/15 of the height, re-encoded), one core (one OpenCV
    thread, like the pipeline's workers)."""
    cv2.setNumThreads(1)
    with pinned(1):
        jpgs = [t.extractfile(m).read() for p in sorted(inputs.glob("*.tar")) for t in [tarfile.open(p)] for m in t.getmembers() if m.name.endswith(".jpg")]
        decoded = [decode_image(j, 50_000_000, short_side)[0] for j in jpgs[:8]]  # the pictures the outputs encode; a warm-up
        start = time.perf_counter()
        for jpg in jpgs:  # none kept: 480 full-size images would hold 4.8 GB
            decode_image(jpg, 50_000_000, short_side)
        decode_s = time.perf_counter() - start
        width, height = (round(WIDTH * short_side / HEIGHT), short_side) if short_side else (WIDTH, HEIGHT)
        outputs_of = [cv2.resize(d, (width, height), interpolation=cv2.INTER_AREA) for d in decoded] if short_side else decoded
        mask = np.zeros((height, width), np.uint8)
        cv2.ellipse(mask, (width // 2, height // 2), (width * 2 // 15, height * 2 // 15), 0, 0, 360, 255, -1)
        start = time.perf_counter()
        for i in range(encodes):
            image = outputs_of[i % len(outputs_of)]
            target = encode_jpeg(image, quality, row_restarts=True)  # the source: the paste's rows spliced in
            splice_jpeg_rows(target, image, (height // 2 - height * 2 // 15, height // 2 + height * 2 // 15), quality)
            encode_png_gray(mask), encode_png_gray(mask)
        return decode_s, (time.perf_counter() - start) / encodes


def codec_rate(bound: tuple[float, float], triplets: int) -> float:
    """Triplets/s of a `codec_bound` measurement for a run writing `triplets`: every input decoded once, each triplet encoded."""
    decode_s, encode_s = bound
    return triplets / (decode_s + triplets * encode_s)


def without_ray(inputs: Path, overrides: dict) -> tuple[int, float]:
    """(triplets, seconds) of the same per-group work in this process, one core: what Ray adds is the rest."""
    config = Syn4RemovalConfig.model_validate(overrides)
    digest = config_hash(config)
    triplets, seconds = 0, 0.0
    with pinned(1):
        for tar in sorted(inputs.glob("*.tar")):
            with open(tar, "rb") as f:
                rows = list(unit_groups(tar.name, "sa1b", "", tar_items(f, tar.name, config.max_file_bytes), config.group_size, set(), True))
            start = time.perf_counter()
            triplets += sum(len(finish(extract(row, config), config, digest)["keys"]) for row in rows)
            seconds += time.perf_counter() - start
    return triplets, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--workdir", default="/tmp/pairmine-bench")
    parser.add_argument("--resize-short-side", type=int, default=0, help="backgrounds.resize_short_side (0: full resolution)")
    parser.add_argument("--blending", choices=("matting", "feather"), default="matting", help="blending.method")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    inputs = make_inputs(workdir, args.images)
    resize = args.resize_short_side or None
    settings = ["shards.max_samples=100", f"blending.method={args.blending}"] + ([f"backgrounds.resize_short_side={resize}"] if resize else [])
    masks = [len(json.loads(t.extractfile(m).read())["annotations"]) for t in [tarfile.open(next(inputs.glob("*.tar")))] for m in t.getmembers() if m.name.endswith(".json")]
    # the bound before and after the Ray runs: this machine's speed drifts between runs (up to 30 %), so the
    # ratios use their mean and the drift is printed next to them
    bounds = [codec_bound(inputs, 95, resize)]
    results = {}
    for cpus in (1, 2):
        # the sample tar in groups of 2 gives one warm-up task per CPU; shards of 100 samples let shard
        # writes overlap the compute, as they do at scale (default 1000: one shard, written at the end)
        results[cpus] = timed_run(SYN4REMOVAL, [str(inputs)], [str(SAMPLE_TAR)], workdir / f"out-{cpus}", cpus,
                                  settings, ["group_size=2"])
    triplets = results[1]["summary"]["written"]["samples"]
    assert triplets == results[2]["summary"]["written"]["samples"], "runs with 1 and 2 CPUs disagree"
    bounds.append(codec_bound(inputs, 95, resize))
    before, after = (codec_rate(bound, triplets) for bound in bounds)
    bound_rate = (before + after) / 2
    alone_triplets, alone_s = without_ray(inputs, {"backgrounds": {"resize_short_side": resize}, "blending": {"method": args.blending}})
    report = {"images": args.images, "size": f"{WIDTH}x{HEIGHT}", "resize_short_side": resize, "blending": args.blending, "masks_per_image": round(float(np.mean(masks)), 1),
              "triplets": triplets, "bound_triplets_per_s_per_core": round(bound_rate, 3),
              "bound_before_after": [round(before, 3), round(after, 3)],
              "without_ray_triplets_per_s": round(alone_triplets / alone_s, 3),
              "without_ray_ratio_to_bound": round(alone_triplets / alone_s / bound_rate, 3)}
    for cpus, result in results.items():
        rate = triplets / result["summary"]["wall_seconds"]
        report[f"{cpus}_cpu"] = {
            "wall_s": result["summary"]["wall_seconds"],
            "triplets_per_s": round(rate, 3),
            "triplets_per_s_per_core": round(rate / cpus, 3),
            "ratio_to_bound_per_core": round(rate / cpus / bound_rate, 3),
            "peak_worker_rss_mb": result["peak_worker_rss_mb"],
            "stages_cpu_s": {k: v["cpu_seconds"] for k, v in result["summary"]["stages"].items()},
            "cpu_profile": result["cpu_profile"],
        }
    report["speedup_1_to_2"] = round(report["2_cpu"]["triplets_per_s"] / report["1_cpu"]["triplets_per_s"], 3)
    report["fixed_cost_1_cpu"] = fixed_cost(SYN4REMOVAL, [str(SAMPLE_TAR)], workdir / "fixed", 1, settings)
    print(json.dumps(report, indent=2))
    print(f"\nbound (decode inputs + encode outputs, 1 core): {bound_rate:.2f} triplets/s "
          f"(before the Ray runs {before:.2f}, after {after:.2f}: the machine drifted {after / before - 1:+.0%})")
    print(f"the same per-group work without Ray (1 core): {report['without_ray_triplets_per_s']:.2f} triplets/s "
          f"= {report['without_ray_ratio_to_bound']:.2f} of the bound")
    for cpus in (1, 2):
        r = report[f"{cpus}_cpu"]
        print(f"{cpus} Ray CPU(s): {r['triplets_per_s']:.2f} triplets/s = {r['triplets_per_s_per_core']:.2f}/core "
              f"= {r['ratio_to_bound_per_core']:.2f} of the bound per core; peak worker RSS {r['peak_worker_rss_mb']} MB")
        print_profile(cpus, r["cpu_profile"])
    print(f"speed-up 1 -> 2 CPUs: {report['speedup_1_to_2']:.2f}x")
    print_fixed_cost(report["fixed_cost_1_cpu"], "the sample tar")


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    main()
