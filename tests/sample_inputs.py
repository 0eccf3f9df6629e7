"""Inputs built from the shared sample data (renamed copies of the real records) for pipeline tests."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
GOOD_SA1B = ("sa_100", "sa_101", "sa_102", "sa_103", "sa_142238")


def sa1b_members() -> dict[str, dict[str, bytes]]:
    """The shared tar's members by stem and extension."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(TESTDATA / "sa1b" / "sa_000000.tar") as tar:
        for member in tar.getmembers():
            stem, _, ext = member.name.rpartition(".")
            members.setdefault(stem, {})[ext] = tar.extractfile(member).read()
    return members


def write_loose_sa1b(folder: Path, count: int, first: int = 1000) -> list[str]:
    """A loose SA-1B folder of `count` records cycling over the good sample records; returns the stems."""
    folder.mkdir(parents=True, exist_ok=True)
    members = sa1b_members()
    stems = []
    for i in range(count):
        stem = f"sa_{first + i}"
        source = members[GOOD_SA1B[i % len(GOOD_SA1B)]]
        (folder / f"{stem}.jpg").write_bytes(source["jpg"])
        (folder / f"{stem}.json").write_bytes(source["json"])
        stems.append(stem)
    return stems


def write_panoptic_root(root: Path, copies: int, per_image_layout: bool = False) -> Path:
    """A COCO-panoptic root holding `copies` renamed copies of the sample image (global or per-image json)."""
    src = TESTDATA / "coconut" / "panoptic"
    doc = json.loads((src / "annotations" / "panoptic_val2017.json").read_text())
    image, annotation = doc["images"][0], doc["annotations"][0]
    (root / "val2017").mkdir(parents=True)
    png_dir = root / ("panoptic_val2017" if per_image_layout else "annotations/panoptic_val2017")
    png_dir.mkdir(parents=True)
    images, annotations = [], []
    for i in range(copies):
        stem = f"{i + 1:012d}"
        shutil.copy(src / "val2017" / image["file_name"], root / "val2017" / f"{stem}.jpg")
        shutil.copy(src / "panoptic_val2017" / annotation["file_name"], png_dir / f"{stem}.png")
        images.append(image | {"id": i + 1, "file_name": f"{stem}.jpg"})
        annotations.append(annotation | {"image_id": i + 1, "file_name": f"{stem}.png"})
        if per_image_layout:  # the bare-list layout of segments_info
            (png_dir / f"{stem}.json").write_text(json.dumps(annotation["segments_info"]))
    if per_image_layout:
        shutil.copy(TESTDATA / "coconut" / "panoptic_coco_categories.json", root / "panoptic_coco_categories.json")
    else:
        (root / "annotations" / "panoptic_val2017.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": doc["categories"]})
        )
    return root
