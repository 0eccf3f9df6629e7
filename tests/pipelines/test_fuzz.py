"""Fuzzing the pipelines end to end (hypothesis, bounded and derandomized for CI): mutated SA-1B records and
member names, panoptic jsons and video containers. Whatever the input, a run must finish, account for every
input record exactly once (in a sample or in rejects/), write strict JSON, and pass `pairmine verify`.

CI runs 8 derandomized examples per target; ``PAIRMINE_FUZZ_EXAMPLES=200`` hunts deeper (randomly seeded)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sample_inputs import GOOD_SA1B, NOT_UTF8, TESTDATA, make_video, sa1b_members, write_panoptic_root

from pairmine.pipelines.run import run
from pairmine.pipelines.syn4removal import SYN4REMOVAL
from pairmine.pipelines.verify import verify
from pairmine.pipelines.video4removal import VIDEO4REMOVAL

DEEP = int(os.environ.get("PAIRMINE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=DEEP or 8, deadline=None, derandomize=not DEEP, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
BAD_VALUES = st.sampled_from([float("nan"), float("inf"), float("-inf"), -1, 0, 10**400, 1e308, "text", None, [], {}, True, [1, 2]])
NAMES = st.sampled_from(["sa_{i}", "sa_{i}" + NOT_UTF8, "sa.{i}.x", "dir/sa_{i}", "../sa_{i}", "sa_0", " sa {i} "])
ANNOTATION_KEYS = st.sampled_from(["predicted_iou", "stability_score", "segmentation", "bbox", "area", "crop_box", "point_coords", "id"])
MEMBERS = sa1b_members()


def _run_and_verify(pipeline, inputs: list[str], output: Path, overrides=()) -> dict:
    summary = run(pipeline, inputs, str(output), overrides=list(overrides), progress_bars=False)
    report = verify(str(output), inputs)
    assert not report.problems, report.problems
    return summary


@st.composite
def sa1b_records(draw) -> list[tuple[str, bytes]]:
    """Tar members: a few records, each maybe with a bad value, an odd name, a lost or repeated member."""
    members = []
    for i in range(draw(st.integers(2, 4))):
        source = MEMBERS[GOOD_SA1B[draw(st.integers(0, len(GOOD_SA1B) - 1))]]
        doc = json.loads(source["json"])
        what = draw(st.sampled_from(["none", "annotation", "top", "size"]))
        if what == "annotation" and doc["annotations"]:
            doc["annotations"][draw(st.integers(0, len(doc["annotations"]) - 1))][draw(ANNOTATION_KEYS)] = draw(BAD_VALUES)
        elif what == "top":
            doc[draw(st.sampled_from(["annotations", "image"]))] = draw(BAD_VALUES)
        elif what == "size" and doc["annotations"]:
            doc["annotations"][0]["segmentation"]["size"] = [draw(BAD_VALUES), 5]
        stem = draw(NAMES).format(i=i)
        files = [(f"{stem}.jpg", source["jpg"]), (f"{stem}.json", json.dumps(doc).encode())]
        change = draw(st.sampled_from(["keep", "drop", "repeat", "swap"]))
        if change == "drop":
            files.pop(draw(st.integers(0, 1)))
        elif change == "repeat":
            files.append(files[draw(st.integers(0, 1))])
        elif change == "swap":
            files.reverse()
        members += files
    return members


@FUZZ
@given(members=sa1b_records())
def test_fuzzed_sa1b_tars(members, ray_local):
    with tempfile.TemporaryDirectory() as folder:
        tar_path = Path(folder) / "fuzz.tar"
        with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        summary = _run_and_verify(SYN4REMOVAL, [str(tar_path)], Path(folder) / "out", ["group_size=2"])
        assert summary["units"]["given"] == 1


@st.composite
def panoptic_mutations(draw) -> list[tuple[str, object]]:
    """Dotted paths into a panoptic json and the bad values to put there."""
    paths = st.sampled_from([
        "annotations", "categories", "images", "annotations.0.segments_info", "annotations.0.segments_info.0.bbox",
        "annotations.0.segments_info.0.area", "annotations.0.segments_info.0.category_id", "annotations.0.segments_info.0.id",
        "annotations.0.file_name", "categories.0.isthing", "categories.0.id", "annotations.0.segments_info.1",
    ])
    return draw(st.lists(st.tuples(paths, BAD_VALUES), min_size=1, max_size=3))


def _put(doc, path: str, value) -> None:
    *parents, last = path.split(".")
    node = doc
    for part in parents:  # a path an earlier mutation took away is left alone
        if isinstance(node, list):
            node = node[int(part)] if int(part) < len(node) else None
        else:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, list) and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value


@FUZZ
@given(mutations=panoptic_mutations())
def test_fuzzed_panoptic_jsons(mutations, ray_local):
    with tempfile.TemporaryDirectory() as folder:
        root = write_panoptic_root(Path(folder) / "coco", 3)
        path = root / "annotations" / "panoptic_val2017.json"
        doc = json.loads(path.read_text())
        for where, value in mutations:
            _put(doc, where, value)
        path.write_text(json.dumps(doc))
        _run_and_verify(SYN4REMOVAL, [f"panoptic:{root}"], Path(folder) / "out")


@pytest.fixture(scope="module")
def small_video(tmp_path_factory) -> bytes:
    return make_video(tmp_path_factory.mktemp("video") / "v.mp4", 96, 64, frames=60).read_bytes()


@FUZZ
@given(cut=st.floats(0.0, 1.0), noise=st.binary(min_size=0, max_size=64), offset=st.floats(0.0, 1.0),
       how=st.sampled_from(["truncate", "overwrite", "prepend", "empty", "keep"]))
def test_fuzzed_video_containers(small_video, cut, noise, offset, how, ray_local):
    data = small_video
    at = int(offset * len(data))
    if how == "truncate":
        data = data[: int(cut * len(data))]
    elif how == "overwrite":
        data = data[:at] + noise + data[at + len(noise):]
    elif how == "prepend":
        data = noise + data
    elif how == "empty":
        data = b""
    with tempfile.TemporaryDirectory() as folder:
        videos = Path(folder) / "videos"
        videos.mkdir()
        (videos / "fuzzed.mp4").write_bytes(data)
        shutil.copy(TESTDATA / "video" / "01_dog.mp4", videos / "good.mp4")
        _run_and_verify(VIDEO4REMOVAL, [str(videos)], Path(folder) / "out")
