"""Fixtures of the operator tests: the real SA-1B tar and COCO panoptic sample, read once per session.

Paths are recomputed here (not imported from tests/conftest.py, which --import-mode=importlib does not
make importable); the `testdata` fixture of tests/conftest.py checks that the data is there.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"
SA1B_TAR = TESTDATA / "sa1b" / "sa_000000.tar"
PANOPTIC_ROOT = TESTDATA / "coconut" / "panoptic"

SA1B_UNIT = "sa_000000.tar"


@pytest.fixture(scope="session")
def sa1b_members(testdata) -> dict[str, bytes]:
    """Every member of the SA-1B sample tar by its name in the tar (including the escaping ones)."""
    with tarfile.open(SA1B_TAR) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.fixture(scope="session")
def sa1b_row(sa1b_members):
    """A factory of reader-style rows for the tar.

    Like the reader, records are the stems that have both a .jpg and a .json inside the extraction
    directory; the orphan json (sa_900005) and the escaping members (../../sa_900006.*) are not records
    but reader rejects carried in the row.
    """

    def make(stems: tuple[str, ...] | None = None) -> dict:
        pairs: dict[str, dict] = {}
        for name, data in sa1b_members.items():
            if name.startswith("../") or name.startswith("/"):
                continue
            stem, _, ext = name.rpartition(".")
            pairs.setdefault(stem, {"id": stem, "segmentation": None})["image" if ext == "jpg" else "annotation"] = data
        records = [r for r in pairs.values() if "image" in r and "annotation" in r]
        if stems is not None:
            records = [r for r in records if r["id"] in stems]
        rejects = [
            {"input": f"{SA1B_UNIT}/sa_900005", "stage": "read", "reason": "missing_image", "detail": "no .jpg"},
            {"input": f"{SA1B_UNIT}/../../sa_900006.jpg", "stage": "read", "reason": "unsafe_member", "detail": "escapes"},
        ]
        return {
            "unit": SA1B_UNIT,
            "kind": "sa1b",
            "categories": "",
            "records": records,
            "rejects": rejects if stems is None else [],
            "consumed": [r["id"] for r in records],
            "unit_total": -1,
        }

    return make


@pytest.fixture(scope="session")
def panoptic(testdata) -> dict:
    """The COCO panoptic sample: categories, the one image's annotation and its raw files."""
    doc = json.loads((PANOPTIC_ROOT / "annotations" / "panoptic_val2017.json").read_text())
    annotation = doc["annotations"][0]
    stem = annotation["file_name"].rsplit(".", 1)[0]
    return {
        "categories": doc["categories"],
        "annotation": annotation,
        "image_info": doc["images"][0],
        "stem": stem,
        "image": (PANOPTIC_ROOT / "val2017" / f"{stem}.jpg").read_bytes(),
        "png": (PANOPTIC_ROOT / "panoptic_val2017" / annotation["file_name"]).read_bytes(),
    }


@pytest.fixture(scope="session")
def static_clip(testdata) -> tuple[list, list]:
    """synth_static_dev at 480x270, every 3rd frame: BGR images and their ground-truth masks at that size."""
    import cv2
    import numpy as np

    from pairmine.operators.video_io import read_frames

    video = testdata / "video"
    frames = read_frames(str(video / "synth_static_dev.mp4"), range(0, 150, 3), ("pyav",), (480, 270), 1).frames
    truth = np.load(video / "synth_static_dev.gt.npz")["masks"]
    masks = [cv2.resize(truth[f.index].astype(np.uint8), (480, 270), interpolation=cv2.INTER_NEAREST) for f in frames]
    return [f.image for f in frames], masks
