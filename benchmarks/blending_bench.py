"""Feather vs. closed-form matting: the cost per triplet and the seam each leaves, on SA-1B-sized inputs.

The inputs are syn4removal_bench's (2250x1500 photos with ~3x their masks, SA-1B-like). For each method
the same per-group work as the pipeline (decode, cut, compose, blend, encode) runs in this process on one
core, on the same groups with the same seed, so the triplets differ only in their alpha. The methods take
turns group by group (each going first every other group), so the machine's drift falls on both. Printed per
method: triplets/s, ms per triplet, the ratio to the codec bound measured in the same run (decoding the
inputs and encoding the outputs, syn4removal_bench's bound), and the median and 90th percentile of every
pair's boundary seam score (json ``quality.seam``: gradient on the paste outline over the gradient
beside it; ~1-3 blends in, higher is a visible cut).

    .venv/bin/python benchmarks/blending_bench.py [--images 48] [--resize-short-side 512] [--workdir /tmp/pairmine-bench]
"""

from __future__ import annotations

import os

# One BLAS thread, as in Ray's workers (OMP_NUM_THREADS=1), for the in-process rows: on a pinned core an
# idle OpenBLAS thread busy-waits next to the work (it halved the full-resolution row without Ray).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
from syn4removal_bench import codec_bound, codec_rate, make_inputs

from pairmine.operators.syn4removal import compose_group, extract_group
from pairmine.pipelines.config import config_hash
from pairmine.pipelines.inputs import unit_groups
from pairmine.pipelines.readers import tar_items
from pairmine.pipelines.syn4removal import Syn4RemovalConfig


METHODS = ("feather", "matting")


def run_methods(inputs: Path, resize: int | None) -> dict[str, dict]:
    """Triplets, seconds and seam scores of the per-group work with each blending.method, taking turns per group."""
    configs = {m: Syn4RemovalConfig.model_validate({"blending": {"method": m}, "backgrounds": {"resize_short_side": resize}}) for m in METHODS}
    digests = {m: config_hash(c) for m, c in configs.items()}
    results = {m: {"triplets": 0, "seconds": 0.0, "seams": []} for m in METHODS}
    turn = 0
    for tar in sorted(inputs.glob("*.tar")):
        with open(tar, "rb") as f:
            rows = list(unit_groups(tar.name, "sa1b", "", tar_items(f, tar.name, configs["feather"].max_file_bytes),
                                    configs["feather"].group_size, set(), True))
        for row in rows:
            for method in METHODS[::-1] if turn % 2 else METHODS:
                config, result = configs[method], results[method]
                start = time.perf_counter()
                samples = compose_group(extract_group(row, config, config.entities.scorer), config, digests[method])
                result["seconds"] += time.perf_counter() - start
                result["triplets"] += len(samples)
                result["seams"] += [json.loads(s["json"])["quality"]["seam"] for s in samples]
            turn += 1
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--resize-short-side", type=int, default=512, help="backgrounds.resize_short_side (0: full resolution)")
    parser.add_argument("--workdir", default="/tmp/pairmine-bench")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
    inputs = make_inputs(Path(args.workdir), args.images)
    resize = args.resize_short_side or None
    results = run_methods(inputs, resize)
    triplets = results["feather"]["triplets"]
    bound_rate = codec_rate(codec_bound(inputs, 95, resize), triplets)
    report = {"images": args.images, "resize_short_side": resize, "bound_triplets_per_s": round(bound_rate, 3)}
    for method, r in results.items():
        rate = r["triplets"] / r["seconds"]
        report[method] = {
            "triplets": r["triplets"], "triplets_per_s": round(rate, 3), "ms_per_triplet": round(1000 / rate, 1),
            "ratio_to_bound": round(rate / bound_rate, 3),
            "seam_median": round(float(np.median(r["seams"])), 3), "seam_p90": round(float(np.percentile(r["seams"], 90)), 3),
        }
    print(json.dumps(report, indent=2))
    f, m = report["feather"], report["matting"]
    print(f"\nfeather: {f['ms_per_triplet']} ms/triplet, seam median {f['seam_median']} (p90 {f['seam_p90']})")
    print(f"matting: {m['ms_per_triplet']} ms/triplet, seam median {m['seam_median']} (p90 {m['seam_p90']})")
    print(f"matting costs {m['ms_per_triplet'] / f['ms_per_triplet']:.2f}x feather's time per triplet; "
          f"bound {bound_rate:.2f} triplets/s (1 core)")


if __name__ == "__main__":
    main()
