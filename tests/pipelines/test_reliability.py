"""Regression tests of the fault-and-fuzz pass: bad values and names never kill a run, nothing is lost or
written twice, bad arguments stop in one line before any work. Every output ends verified (`pairmine verify`)."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import cli, read_parquet_dir, read_samples
from PIL import Image
from sample_inputs import GOOD_SA1B, NOT_UTF8, TESTDATA, make_video, sa1b_members, write_loose_sa1b, write_panoptic_root

from pairmine import dataset
from pairmine.pipelines.run import run
from pairmine.pipelines.syn4removal import SYN4REMOVAL
from pairmine.pipelines.verify import verify
from pairmine.pipelines.video4removal import VIDEO4REMOVAL



def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _with_scores(doc: dict, **values) -> bytes:
    """The record's JSON with its first annotation's scores replaced, written as Python does (NaN, Infinity)."""
    doc = json.loads(json.dumps(doc))
    doc["annotations"][0].update(values)
    return json.dumps(doc).encode()


def hostile_tar(path: Path) -> None:
    """Good records beside NaN / Infinity / huge scores, a name that is not UTF-8, links and repeated names."""
    members = sa1b_members()
    good = [members[s] for s in GOOD_SA1B]
    docs = [json.loads(m["json"]) for m in good]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        _member(tar, "sa_1.jpg", good[0]["jpg"])
        _member(tar, "sa_1.json", _with_scores(docs[0], predicted_iou=float("nan")))
        _member(tar, "sa_2.jpg", good[1]["jpg"])
        _member(tar, "sa_2.json", _with_scores(docs[1], stability_score=float("inf"), predicted_iou=10**400))
        _member(tar, f"sa_{NOT_UTF8}.jpg", good[2]["jpg"])
        _member(tar, f"sa_{NOT_UTF8}.json", good[2]["json"])
        _member(tar, "sa_3.jpg", good[3]["jpg"])
        _member(tar, "sa_3.json", good[3]["json"])
        _member(tar, "sa_3.jpg", good[3]["jpg"])  # a repeated name after its record completed
        link = tarfile.TarInfo("sa_4.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        _member(tar, "sa_4.json", good[4]["json"])
        _member(tar, "sa_5.json", good[4]["json"])  # a link for its image: the record is that reject, nothing else
        hard = tarfile.TarInfo("sa_5.jpg")
        hard.type, hard.linkname = tarfile.LNKTYPE, "sa_3.jpg"
        tar.addfile(hard)


def _accounted(output: Path) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {}
    for row in dataset.read_manifest(str(output)).to_pylist():
        for entry in row["inputs"]:
            ids.setdefault(entry["unit"], []).extend(entry["ids"])
    return ids


def _verified(output: Path, *inputs: Path) -> None:
    report = verify(str(output), [str(i) for i in inputs])
    assert not report.problems, report.problems


def test_bad_values_names_links_and_repeats_in_a_tar(tmp_path, ray_local):
    hostile_tar(tmp_path / "hostile.tar")
    out = tmp_path / "out"
    summary = run(SYN4REMOVAL, [str(tmp_path / "hostile.tar")], str(out), overrides=["group_size=2"], progress_bars=False)
    rejects = {(r["input"], r["reason"]) for r in read_parquet_dir(str(out / "rejects"))}
    assert ("hostile.tar/sa_1#0", "non_finite_value") in rejects and ("hostile.tar/sa_2#0", "non_finite_value") in rejects
    assert ("hostile.tar/sa_3.jpg", "duplicate_member") in rejects
    assert ("hostile.tar/sa_4.jpg", "unsafe_member") in rejects and ("hostile.tar/sa_5.jpg", "unsafe_member") in rejects
    assert not any(reason == "missing_image" for _, reason in rejects), "no record reported missing that was there"
    ids = _accounted(out)["hostile.tar"]
    members = {"hostile.tar/sa_3.jpg", "hostile.tar/sa_4.json"}  # members rejected on their own (a repeat, a link's json): by name
    assert sorted(ids) == sorted({"sa_1", "sa_2", "sa_3", "sa_4", "sa_5", "sa_caf\\xe9"} | members), "every id once, the odd name escaped"
    for sample in read_samples(str(out)):  # strict JSON: no NaN or Infinity token
        json.loads(sample["json"], parse_constant=lambda token: pytest.fail(f"{token} in a sample json"))
    _verified(out, tmp_path / "hostile.tar")
    again = run(SYN4REMOVAL, [str(tmp_path / "hostile.tar")], str(out), overrides=["group_size=2"], progress_bars=False)
    assert again["units"]["planned"] == 0 and again["written"]["samples"] == 0, "the tar is complete: a rerun reads nothing"
    assert len(read_parquet_dir(str(out / "rejects"))) == summary["rejects"]["total"], "no reject written twice"


def test_the_same_tar_given_twice_is_one_unit(tmp_path, ray_local):
    shutil.copy(TESTDATA / "sa1b" / "sa_000000.tar", tmp_path / "sa.tar")
    out = tmp_path / "out"
    os.chdir(tmp_path)
    first = run(SYN4REMOVAL, ["sa.tar", str(tmp_path / "sa.tar"), f"{tmp_path}/./sa.tar"], str(out), progress_bars=False)
    assert first["units"]["given"] == 1
    again = run(SYN4REMOVAL, [str(tmp_path / "sa.tar")], str(out), progress_bars=False)
    assert again["units"]["planned"] == 0 and again["output_totals"]["samples"] == first["written"]["samples"]


def test_odd_files_in_a_loose_folder(tmp_path, ray_local):
    loose = tmp_path / "loose"
    stems = write_loose_sa1b(loose, 4)
    (loose / f"{stems[0]}.jpeg").write_bytes((loose / f"{stems[0]}.jpg").read_bytes())  # x.jpg and x.jpeg beside one x.json
    with open(os.path.join(os.fsencode(loose), b"sa_caf\xe9.jpg"), "wb") as f:
        f.write((loose / f"{stems[1]}.jpg").read_bytes())
    os.symlink(tmp_path / "nowhere.json", loose / "sa_dangling.json")
    out = tmp_path / "out"
    run(SYN4REMOVAL, [str(loose)], str(out), overrides=["group_size=2"], progress_bars=False)
    rejects = {(r["input"], r["reason"]) for r in read_parquet_dir(str(out / "rejects"))}
    assert (f"loose/{stems[0]}.jpg", "duplicate_image") in rejects or (f"loose/{stems[0]}.jpeg", "duplicate_image") in rejects
    assert ("loose/sa_caf\\xe9.jpg", "unreadable_name") in rejects and ("loose/sa_dangling.json", "unreadable_name") in rejects
    _verified(out, loose)
    before = len(read_parquet_dir(str(out / "rejects")))
    run(SYN4REMOVAL, [str(loose)], str(out), overrides=["group_size=2"], progress_bars=False)
    assert len(read_parquet_dir(str(out / "rejects"))) == before, "a folder is listed again, its rejects are not written again"


def test_a_panoptic_json_with_null_lists_is_a_reject(tmp_path, ray_local):
    root = write_panoptic_root(tmp_path / "coco", 2)
    doc = json.loads((root / "annotations" / "panoptic_val2017.json").read_text())
    (root / "annotations" / "panoptic_val2017.json").write_text(json.dumps(doc | {"annotations": None}))
    other = write_panoptic_root(tmp_path / "coco2", 2)
    info = json.loads((other / "annotations" / "panoptic_val2017.json").read_text())
    info["annotations"][0]["segments_info"][0]["bbox"] = [float("nan"), 0, 10, 10]
    (other / "annotations" / "panoptic_val2017.json").write_text(json.dumps(info))
    out = tmp_path / "out"
    run(SYN4REMOVAL, [f"panoptic:{root}", f"panoptic:{other}"], str(out), progress_bars=False)
    reasons = {(r["input"].split("/")[0], r["reason"]) for r in read_parquet_dir(str(out / "rejects"))}
    assert ("coco", "malformed_json") in reasons and ("coco2", "non_finite_value") in reasons


def test_a_video_of_a_few_pixels_and_a_rotated_one(tmp_path, ray_local):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "tiny.mp4", 4, 4)
    shutil.copy(TESTDATA / "video" / "synth_static_dev.mp4", videos / "static.mp4")
    out = tmp_path / "out"
    run(VIDEO4REMOVAL, [str(videos)], str(out), progress_bars=False)
    assert ("tiny.mp4#0-0", "video_too_small") in {(r["input"], r["reason"]) for r in read_parquet_dir(str(out / "rejects"))}
    assert all(json.loads(s["json"])["video_info"]["rotation"] == 0 for s in read_samples(str(out)))
    _verified(out, videos)
    from pairmine.operators.video_io import read_frames

    rotated = make_video(tmp_path / "rotated.mp4", 64, 48, rotation=90)
    assert read_frames(str(rotated), [0], ("pyav",), None, 1).frames[0].rotation == 90


def test_a_manifest_temp_file_of_a_killed_run_counts_for_nothing(tmp_path, ray_local):
    loose = tmp_path / "loose"
    write_loose_sa1b(loose, 4)
    out = tmp_path / "out"
    first = run(SYN4REMOVAL, [str(loose)], str(out), overrides=["group_size=2"], progress_bars=False)
    manifest = sorted((out / "manifest").glob("*.parquet"))[0]
    (out / "manifest" / f".tmp-0123-{manifest.name}").write_bytes(manifest.read_bytes()[:200])  # killed mid-write
    (out / "manifest" / f".tmp-4567-{manifest.name}").write_bytes(manifest.read_bytes())  # killed before the rename
    again = run(SYN4REMOVAL, [str(loose)], str(out), overrides=["group_size=2"], progress_bars=False)
    assert again["output_totals"] == first["output_totals"] and not list((out / "manifest").glob(".tmp-*"))
    _verified(out, loose)


def test_shards_have_the_usual_file_mode_and_failed_writes_leave_no_staging_file(tmp_path, ray_local, monkeypatch):
    loose = tmp_path / "loose"
    write_loose_sa1b(loose, 2)
    out = tmp_path / "out"
    run(SYN4REMOVAL, [str(loose)], str(out), progress_bars=False)
    umask = os.umask(0)
    os.umask(umask)
    modes = {stat.S_IMODE(p.stat().st_mode) for folder in ("shards", "manifest") for p in (out / folder).iterdir()}
    assert modes == {0o666 & ~umask}, "shards and manifests alike"

    from pairmine.pipelines import writer
    from pairmine.pipelines.config import ShardParams

    def broken(path, uri):
        raise OSError("connection reset")

    monkeypatch.setattr(writer.storage, "upload_file", broken)
    sink = writer.ShardSink(str(tmp_path / "out2"), "test", "r", "h", "0", ShardParams(), 1)
    row = writer.pack_group("u", ["a"], 1, [{"__key__": "k", "txt": b"x"}], [], writer.Stats())

    class Context:
        task_idx = 0

    import pyarrow as pa

    with pytest.raises(OSError, match="connection reset"):
        sink.write([pa.Table.from_pylist([row])], Context())
    assert not list((tmp_path / "out2" / "shards").glob("*")), "the staging file went with the failure"


def test_bad_arguments_stop_in_one_line_and_a_dry_run_touches_nothing(tmp_path):
    tar = str(TESTDATA / "sa1b" / "sa_000000.tar")
    bad = cli("syn4removal", "--input", tar, "--output", str(tmp_path / "out"), "--set", "seed=-1", check=False, timeout=120)
    assert bad.returncode == 2 and "seed: Input should be greater than or equal to 0" in bad.stderr and len(bad.stderr.splitlines()) == 1
    dry = cli("syn4removal", "--input", tar, "--output", str(tmp_path / "new" / "out"), "--dry-run", timeout=120)
    assert json.loads(dry.stdout)["units"] and not (tmp_path / "new").exists(), "a dry run creates nothing"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to run the CLI as another user")
def test_a_read_only_output_is_one_line_before_any_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    tmp_path.chmod(0o755)
    command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(Path(os.sys.executable).with_name("pairmine")),
               "syn4removal", "--input", str(TESTDATA / "sa1b" / "sa_000000.tar"), "--output", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"output {out} is not writable" in done.stderr and not list(out.iterdir())


def _exif_jpeg(image: np.ndarray, orientation: int) -> bytes:
    im = Image.fromarray(image[..., ::-1])
    exif = im.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def test_exif_orientation_follows_the_annotations_size(tmp_path, ray_local):
    """A photo stored sideways (orientation 6) whose annotations were made upright is turned to fit them;
    one whose annotations fit the stored pixels is used as stored."""
    members = sa1b_members()
    record = members[GOOD_SA1B[1]]  # 600x400: a quarter turn changes its size
    upright = cv2.imdecode(np.frombuffer(record["jpg"], np.uint8), cv2.IMREAD_COLOR)
    loose = tmp_path / "loose"
    loose.mkdir()
    sideways = np.ascontiguousarray(np.rot90(upright, 1))  # stored turned 90° counter-clockwise: EXIF 6 shows it upright
    (loose / "sa_a.jpg").write_bytes(_exif_jpeg(sideways, 6))
    (loose / "sa_a.json").write_bytes(record["json"])
    (loose / "sa_b.jpg").write_bytes(_exif_jpeg(upright, 6))  # annotations fit the stored pixels: kept as stored
    (loose / "sa_b.json").write_bytes(record["json"])
    for i, stem in enumerate(GOOD_SA1B[2:4]):
        (loose / f"sa_c{i}.jpg").write_bytes(members[stem]["jpg"])
        (loose / f"sa_c{i}.json").write_bytes(members[stem]["json"])
    out = tmp_path / "out"
    summary = run(SYN4REMOVAL, [str(loose)], str(out), progress_bars=False)
    rejects = [r for r in read_parquet_dir(str(out / "rejects")) if r["input"].startswith(("loose/sa_a", "loose/sa_b"))]
    assert not any(r["reason"] == "rle_size_mismatch" for r in rejects), "the sideways photo was turned to fit its annotations"
    assert summary["counts"]["exif_turned"] == 1
    turned = [json.loads(s["json"]) for s in read_samples(str(out)) if json.loads(s["json"])["background"]["id"] == "loose/sa_a"]
    assert all(m["background"]["exif_turned"] and (m["background"]["height"], m["background"]["width"]) == upright.shape[:2] for m in turned)
