"""Model stages: items/s per actor over a batch sweep, and end to end with the actor in the graph.

Models are built from the packages' own configs with random weights (no weights can be downloaded
here) and saved as checkpoints: CLIP tiny (tests/models.py) and ViT-B-32; GroundingDINO + SAM2 tiny
and at real size (GroundingDINO SwinT with a small BERT, SAM2.1 hiera-t). Per actor: the scorer or
masker called directly on real inputs (SA-1B-sized entity crops from the syn4removal benchmark's
tars; synth_static_dev pairs), at least 64 items per call sequence, each batch size warmed up with
one untimed call, then the best of two. End to end: the pipeline on an embedded Ray (2 CPUs; with a GPU, every
core up to 16, so that the CPU steps can keep the actor fed) with the model stage in the graph, its items/s and the actor's busy fraction from the run summary; with a GPU the
actor reserves it (num_gpus 1) and runs in the stage's default half precision. Runs on whatever
device `device: auto` finds (the CPU on a machine without a GPU, where the sweep stops at 32 unless
--batches says otherwise).

    .venv/bin/python benchmarks/model_stages_bench.py [--workdir /tmp/pairmine-model-bench] [--real-size] [--batches 1,8,32,128,512]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time
from pathlib import Path

from common import timed_run

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from models import tiny_bert, tiny_clip, tiny_gdino, tiny_sam2  # noqa: E402  (the tests' model builders)

from pairmine.operators.clip_scorer import ClipScorerParams  # noqa: E402
from pairmine.operators.gdino_sam2 import GdinoSam2MaskerParams  # noqa: E402
from pairmine.operators.syn4removal import Syn4RemovalParams, extract_group, materialize_all  # noqa: E402
from pairmine.operators.video4removal import Video4RemovalParams, analyse_segment  # noqa: E402
from pairmine.pipelines.syn4removal import SYN4REMOVAL  # noqa: E402
from pairmine.pipelines.video4removal import VIDEO4REMOVAL  # noqa: E402

TESTDATA = REPO.parent / "shared" / "testdata"
SA1B_SIZED = Path("/tmp/pairmine-bench/sa1b-480/sa_000000.tar")  # made by syn4removal_bench.py
STATIC = TESTDATA / "video" / "synth_static_dev.mp4"


def vit_b32(directory: Path) -> tuple[str, str]:
    import open_clip
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = directory / "vit-b-32-random.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), checkpoint)
    return "ViT-B-32", str(checkpoint)


def real_size_gdino_sam2(directory: Path) -> dict[str, str]:
    """GroundingDINO SwinT (the shipped config, a small BERT) and SAM2.1 hiera-t, random weights."""
    from importlib.util import find_spec

    import sam2  # noqa: F401  (registers its configs with hydra)
    import torch
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig
    from sam2.build_sam import build_sam2

    directory.mkdir(parents=True, exist_ok=True)
    text_encoder = tiny_bert(directory / "bert")
    shipped = Path(find_spec("groundingdino").submodule_search_locations[0]) / "config" / "GroundingDINO_SwinT_OGC.py"
    args = SLConfig.fromfile(str(shipped))
    args.text_encoder_type, args.device = text_encoder, "cpu"
    torch.manual_seed(0)
    torch.save({"model": build_model(args).state_dict()}, directory / "gdino.pth")
    torch.save({"model": build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu").state_dict()}, directory / "sam2.pt")
    return {"gdino_config": "GroundingDINO_SwinT_OGC.py", "gdino_checkpoint": str(directory / "gdino.pth"),
            "text_encoder": text_encoder, "sam2_config": "configs/sam2.1/sam2.1_hiera_t.yaml",
            "sam2_checkpoint": str(directory / "sam2.pt")}


def entity_crops(count: int) -> list:
    """Cut entities of SA-1B-sized records (all candidates, as a CLIP run cuts them)."""
    with tarfile.open(SA1B_SIZED) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    stems = sorted({n.rsplit(".", 1)[0] for n in members})[:16]
    row = {"unit": "u", "kind": "sa1b", "categories": "", "rejects": [], "consumed": [], "unit_total": -1,
           "records": [{"id": s, "image": members[f"{s}.jpg"], "annotation": members[f"{s}.json"], "segmentation": None} for s in stems]}
    params = Syn4RemovalParams.model_validate({"entities": {"scorer": {"name": "clip", "checkpoint": "unused"}}})
    group = extract_group(row, params, params.entities.scorer)
    entities, _ = materialize_all(group.entities, params.entities)
    return entities[:count]


def rate(call, items: int, repeat: int = 2) -> float:
    """Items per second, best of `repeat` after one untimed warm-up call (CUDA kernels, allocator, caches)."""
    call()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return items / best


def clip_rates(model: str, checkpoint: str, entities: list, batches: tuple[int, ...]) -> dict:
    out = {}
    for batch in batches:
        scorer = ClipScorerParams(model=model, checkpoint=checkpoint, batch_size=batch, scale="cosine", threshold=-1).build()
        out[batch] = round(rate(lambda: scorer.score(entities), len(entities)), 2)
    return out


def masker_rates(models: dict, items: list, batches: tuple[int, ...], **params) -> dict:
    out = {}
    for batch in batches:
        masker = GdinoSam2MaskerParams(**models, batch_size=batch, **params).build()
        out[batch] = round(rate(lambda: masker.masks(items), len(items)), 3)
    return out


def masker_profile(models: dict, items: list, batch: int, **params) -> dict:
    """Where one masker call's time goes: wall ms per frame of detection, SAM2 and the matching with the motion
    (the device synchronised around each), and the ops taking most device and host time (torch's profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pairmine.operators import gdino_sam2

    masker = GdinoSam2MaskerParams(**models, batch_size=batch, **params).build()
    cuda = masker.device.type == "cuda"
    spent: dict[str, float] = {}

    def timed(name, call):
        def run(*args, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = call(*args, **kwargs)
            if cuda:
                torch.cuda.synchronize()
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
            return out
        return run

    masker.masks(items)  # warm-up: kernels, allocator
    detector, segmenter = masker.detector, masker.segmenter
    explain = gdino_sam2.explain_motion
    detector._tensor, detector.detect = timed("detect_inputs", detector._tensor), timed("detect", detector.detect)
    segmenter.segment, gdino_sam2.explain_motion = timed("segment", segmenter.segment), timed("explain_motion", explain)
    try:
        start = time.perf_counter()
        masker.masks(items)
        total = time.perf_counter() - start
    finally:  # the instance attributes shadow the methods: deleting them restores the class's
        del detector._tensor, detector.detect, segmenter.segment
        gdino_sam2.explain_motion = explain
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        masker.masks(items)
    for key in ("self_device_time_total", "self_cpu_time_total") if cuda else ("self_cpu_time_total",):
        print(f"top ops by {key}:\n{prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=60)}", flush=True)
    per_frame = {name: round(1000 * seconds / len(items), 2) for name, seconds in spent.items()}  # detect includes its inputs
    return {"frames": len(items), "frame_shape": list(items[0].source.shape), "precision": masker.provenance["precision"],
            "ms_per_frame": {"call": round(1000 * total / len(items), 2), **per_frame}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/pairmine-model-bench")
    parser.add_argument("--real-size", action="store_true", help="also GroundingDINO SwinT + SAM2 hiera-t (minutes on a CPU)")
    parser.add_argument("--batches", help="batch sizes of the sweep (default: 1,8,32,128,512 with a GPU, 1,8,32 without)")
    args = parser.parse_args()
    import torch

    gpu = torch.cuda.is_available()
    batches = tuple(int(b) for b in (args.batches or ("1,8,32,128,512" if gpu else "1,8,32")).split(","))
    items = max(64, max(batches))  # every batch size gets at least one full batch
    if not SA1B_SIZED.exists():
        sys.exit(f"{SA1B_SIZED} is missing: run benchmarks/syn4removal_bench.py first (it makes the SA-1B-sized tars)")
    work = Path(args.workdir)
    report: dict = {}

    crops = entity_crops(64)
    entities = (crops * -(-items // len(crops)))[:items]
    tiny = tiny_clip(work / "clip-tiny")
    report["device"] = "cuda" if gpu else "cpu"
    report["clip_items_per_s"] = {"tiny": clip_rates(*tiny, entities, batches),
                                  "ViT-B-32": clip_rates(*vit_b32(work / "clip-b32"), entities, batches)}

    pair_work = analyse_segment("static", str(STATIC), 0, 150, Video4RemovalParams())
    pairs = [c.mask_input() for c in pair_work.candidates]
    frames = (pairs * -(-items // len(pairs)))[:items]
    tiny_masker = tiny_gdino(work / "gdino") | tiny_sam2(work / "sam2")
    masker_batches = tuple(b for b in batches if b <= 64)  # frames of one shape per call: 64 full frames is already ~0.4 GB
    report["gdino_sam2_items_per_s"] = {"tiny": masker_rates(tiny_masker, frames[:64], masker_batches, detect_short_side=256, box_threshold=0.05)}
    if args.real_size:
        report["gdino_sam2_items_per_s"]["swint+hiera_t"] = masker_rates(real_size_gdino_sam2(work / "real"), frames[:64 if gpu else 4],
                                                                         masker_batches if gpu else (1, 2))

    reserve = ["num_gpus=1"] if gpu else []
    cpus = min(len(os.sched_getaffinity(0)), 16) if gpu else 2  # on a GPU machine every core feeds the actor
    clip_overrides = ["entities.scorer.name=clip", f"entities.scorer.model={tiny[0]}", f"entities.scorer.checkpoint={tiny[1]}",
                      "entities.scorer.scale=cosine", "entities.scorer.threshold=-1", *(f"entities.scorer.{r}" for r in reserve)]
    syn = timed_run(SYN4REMOVAL, [str(SA1B_SIZED)], [str(TESTDATA / "sa1b" / "sa_000000.tar")], work / "syn-out", cpus,
                    clip_overrides, clip_overrides)["summary"]
    masker_overrides = ["masker.name=gdino_sam2", "masker.detect_short_side=256", "masker.box_threshold=0.05",
                        *(f"masker.{k}={v}" for k, v in tiny_masker.items()), *(f"masker.{r}" for r in reserve)]
    video = timed_run(VIDEO4REMOVAL, [str(STATIC)] * 1, [str(STATIC)], work / "video-out", cpus, masker_overrides, masker_overrides)["summary"]
    report[f"end_to_end_{cpus}_cpus" + ("_1_gpu" if gpu else "")] = {
        "syn4removal+clip_tiny": {"triplets_per_s": syn["samples_per_second"], **syn["stages"]["score"]},
        "video4removal+gdino_sam2_tiny": {"pairs_per_s": video["samples_per_second"], **video["stages"]["mask"]},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
