"""Inputs built from the shared sample data (renamed copies of the real records) for pipeline tests."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np

TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
GOOD_SA1B = ("sa_100", "sa_101", "sa_102", "sa_103", "sa_142238")
NOT_UTF8 = b"caf\xe9".decode("utf-8", "surrogateescape")  # how os and tarfile hold a name that is not UTF-8


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


def write_sa1b_tars(folder: Path, tars: int, per_tar: int) -> list[Path]:
    """`tars` SA-1B tars of `per_tar` records each, cycling over the good sample records (distinct stems)."""
    folder.mkdir(parents=True, exist_ok=True)
    members = sa1b_members()
    paths = []
    for t in range(tars):
        paths.append(folder / f"sa_{t:06d}.tar")
        with tarfile.open(paths[-1], "w") as tar:
            for i in range(per_tar):
                source = members[GOOD_SA1B[i % len(GOOD_SA1B)]]
                for ext in ("jpg", "json"):
                    info = tarfile.TarInfo(f"sa_{t * per_tar + i + 2000}.{ext}")
                    info.size = len(source[ext])
                    tar.addfile(info, io.BytesIO(source[ext]))
    return paths


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


def make_video(path: Path, width: int, height: int, rotation: int = 0, frames: int = 40) -> Path:
    """An H.264 clip of a static grey scene with a bright bar moving across it (optionally display-rotated)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            image = np.full((height, width, 3), 90, np.uint8)
            image[:, (i * 3) % width : (i * 3) % width + 4] = 250
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
