"""Input discovery and group planning."""

from __future__ import annotations

import io
import json
import shutil

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from openimages_fixture import write_openimages
from sample_inputs import TESTDATA, write_loose_sa1b, write_panoptic_root

from pairmine import storage
from pairmine.pipelines import inputs
from pairmine.pipelines.inputs import InputError, Unit, discover, discover_all, discover_videos, groups_of, plan_groups, reconcile, unit_groups
from pairmine.pipelines.run import plan
from pairmine.pipelines.video4removal import VIDEO4REMOVAL

SA1B_TAR = TESTDATA / "sa1b" / "sa_000000.tar"


def test_kinds_are_detected(tmp_path):
    tars = tmp_path / "tars"
    tars.mkdir()
    for name in ("sa_000001.tar", "sa_000002.tar"):
        shutil.copy(SA1B_TAR, tars / name)
    write_loose_sa1b(tmp_path / "loose", 2)
    assert [(u.kind, u.name) for u in discover(str(SA1B_TAR))] == [("sa1b-tar", "sa_000000.tar")]
    assert [u.name for u in discover(str(tars))] == ["sa_000001.tar", "sa_000002.tar"]
    assert [(u.kind, u.name) for u in discover(str(tmp_path / "loose"))] == [("sa1b-dir", "loose")]
    assert [(u.kind, u.name) for u in discover(str(TESTDATA / "coconut" / "panoptic"))] == [("panoptic", "panoptic/val2017")]


def test_ambiguous_folder_needs_a_kind_prefix(tmp_path):
    write_loose_sa1b(tmp_path, 2)
    shutil.copy(SA1B_TAR, tmp_path / "sa_000009.tar")
    with pytest.raises(InputError, match="several input kinds"):
        discover(str(tmp_path))
    assert [u.kind for u in discover(f"sa1b-tar:{tmp_path}")] == ["sa1b-tar"]
    assert [u.kind for u in discover(f"sa1b-dir:{tmp_path}")] == ["sa1b-dir"]


@pytest.mark.parametrize("arg, message", [("no/such/dir", "input not found"), (__file__, "only SA-1B tars")])
def test_unusable_inputs_are_input_errors(arg, message):
    with pytest.raises(InputError, match=message):
        discover(arg)


def test_empty_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no SA-1B tars"):
        discover(str(tmp_path))


def test_unit_names_are_unique_and_duplicates_dropped(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(SA1B_TAR, tmp_path / d / "sa_000000.tar")
    units = discover_all([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "a" / "sa_000000.tar")])
    assert len(units) == 2 and len({u.name for u in units}) == 2 and units[0].name == "sa_000000.tar"


def test_units_keep_the_names_earlier_runs_committed_them_under():
    """A unit is known by where it was read from, not by the name its --input root gives it."""
    sources = {"cam1.mp4": ("/d/day1/cam1.mp4", 100), "old.mp4": (None, None), "half.mp4": ("/d/half.mp4", 50),
               "empty.mp4": ("/d/empty.mp4", 0), "loose": ("/d/loose", None)}
    found = [Unit("video", "day1/cam1.mp4", "/d/day1/cam1.mp4", size=100),  # the same file, from the parent folder
             Unit("video", "cam1.mp4", "/d/day2/cam1.mp4", size=100),  # another day's file of that name
             Unit("video", "old.mp4", "/d/old.mp4", size=7),  # committed by a version that recorded no URI
             Unit("video", "half.mp4", "/d/half.mp4", size=80),  # grown since: it was read half-uploaded
             Unit("video", "new.mp4", "/d/new.mp4", size=9),
             Unit("video", "empty.mp4", "/d/empty.mp4", size=5000),  # listed while it was still empty
             Unit("sa1b-dir", "loose", "/d/loose")]  # a folder: it grows by design, known by its URI alone
    named = [u.name for u in reconcile(found, sources)]
    assert named[0] == "cam1.mp4" and named[2] == "old.mp4" and named[4] == "new.mp4" and named[6] == "loose"
    assert named[1].startswith("cam1.mp4~") and named[3].startswith("half.mp4~") and named[5].startswith("empty.mp4~")
    assert len(set(named)) == 7
    assert [u.name for u in reconcile(found[3:4], sources)] == [named[3]], "a changed file gets one name, whatever else is found"
    assert reconcile(found, {}) == found


@pytest.mark.parametrize("count, size", [(1, 4), (4, 4), (7, 4), (8, 4), (9, 4), (23, 5)])
def test_groups_keep_order_and_only_the_last_takes_the_rest(count, size):
    groups = list(groups_of(range(count), size))
    assert [i for g in groups for i in g] == list(range(count))
    assert all(len(g) == size for g in groups[:-1]) and (len(groups) == 1 or size <= len(groups[-1]) < 2 * size)


@pytest.mark.parametrize("done", [[0], [2], [0, 2], [1, 3], [3]])
def test_regrouping_without_committed_groups_rebuilds_the_same_groups(done):
    """The resume rule: dropping whole committed groups leaves the other groups unchanged."""
    groups = list(groups_of(range(23), 5))
    skip = {i for g in done for i in groups[g]}
    regrouped = list(groups_of((i for i in range(23) if i not in skip), 5))
    assert regrouped == [g for n, g in enumerate(groups) if n not in done]


def test_unit_groups_account_for_every_id_once():
    from pairmine.dataset import Reject

    items = [(f"r{i}", {"id": f"r{i}"}) for i in range(5)] + [("bad", Reject("u/bad", "read", "x")), (None, Reject("u", "read", "truncated_tar"))]
    rows = list(unit_groups("u", "sa1b", "", items, 2, skip={"r0"}, immutable=True))
    consumed = [i for r in rows for i in r["consumed"]]
    assert sorted(consumed) == ["bad", "r1", "r2", "r3", "r4", "u"], "a reject about the unit is accounted for by its input"
    assert [r["unit_total"] for r in rows] == [-1, 7] and len(rows[-1]["rejects"]) == 2
    again = list(unit_groups("u", "sa1b", "", items, 2, skip={"r0", *consumed}, immutable=False))
    assert not [r for row in again for r in row["rejects"]], "a rerun over a folder says no reject twice"
    assert list(unit_groups("u", "sa1b", "", [], 2, set(), immutable=False)) == []


def test_subfolders_that_are_not_searched_are_said(tmp_path, caplog):
    folder = tmp_path / "loose"
    write_loose_sa1b(folder, 1)
    (folder / "more").mkdir()
    with caplog.at_level("WARNING", logger="pairmine.pipelines.inputs"):
        discover(str(folder))
    assert "1 subfolder(s) not searched (more)" in caplog.text


def test_a_folder_of_upper_case_names_is_an_sa1b_folder(tmp_path):
    """X.JPG beside X.JSON (cameras, Windows tools) was refused at discovery: '.json' was matched case-sensitively."""
    folder = tmp_path / "loose"
    for stem in write_loose_sa1b(folder, 2):
        for ext in ("jpg", "json"):
            (folder / f"{stem}.{ext}").rename(folder / f"{stem}.{ext.upper()}")
    (unit,) = discover(str(folder))
    assert [m["id"] for r in plan_groups(unit, group_size=2, skip=set()) for m in r["records"]] == ["sa_1000", "sa_1001"]


def test_a_loose_folder_pairs_a_json_with_a_png_or_webp_image(tmp_path):
    """Own images annotated in SA-1B's format are not always JPEGs: a PNG beside its json was `missing_image`."""
    import cv2

    folder = tmp_path / "loose"
    stems = write_loose_sa1b(folder, 3)
    for stem, ext in zip(stems, ("png", "webp")):
        cv2.imwrite(str(folder / f"{stem}.{ext}"), cv2.imread(str(folder / f"{stem}.jpg")))
        (folder / f"{stem}.jpg").unlink()
    (unit,) = discover(str(folder))
    rows = plan_groups(unit, group_size=3, skip=set())
    assert [m["image"].rsplit(".", 1)[-1] for r in rows for m in r["records"]] == ["png", "webp", "jpg"]
    assert not [r for row in rows for r in row["rejects"]]
    for path in folder.glob("*.jpg"):
        path.unlink()
    assert discover(str(folder))[0].kind == "sa1b-dir", "a folder of PNGs and jsons is an SA-1B folder"
    other = tmp_path / "other"
    other.mkdir()
    (other / "categories.json").write_text("[]")
    shutil.copy(next(folder.glob("*.png")), other / "preview.png")
    with pytest.raises(InputError):
        discover(str(other))  # a json and a picture of other names: not an image with its annotations


def test_planned_folders_pair_files_and_reject_orphans(tmp_path):
    folder = tmp_path / "loose"
    write_loose_sa1b(folder, 5)
    (folder / "sa_1000.json").unlink()
    (folder / "sa_4242.json").write_text("{}")
    (unit,) = discover(str(folder))
    rows = plan_groups(unit, group_size=2, skip={"sa_1004"})
    members = [m["id"] for r in rows for m in r["records"]]
    assert members == ["sa_1001", "sa_1002", "sa_1003"]
    reasons = {r["input"]: r["reason"] for row in rows for r in row["rejects"]}
    assert reasons == {"loose/sa_1000": "missing_annotations", "loose/sa_4242": "missing_image"}
    assert all(r["unit_total"] == -1 for r in rows), "folders are never marked complete"


@pytest.mark.parametrize("per_image_layout", [False, True])
def test_panoptic_layouts_plan_the_same_records(tmp_path, per_image_layout):
    root = write_panoptic_root(tmp_path / "p", 3, per_image_layout)
    for stray in (".DS_Store", "000000000001.jpg.bak", "notes.txt"):  # what image folders collect: no images, no rejects
        (root / "val2017" / stray).write_bytes(b"x")
    (unit,) = discover(str(root))
    rows = plan_groups(unit, group_size=16, skip=set())
    assert [m["id"] for r in rows for m in r["records"]] == ["000000000001", "000000000002", "000000000003"]
    assert not [r for row in rows for r in row["rejects"]]
    assert all(m["segmentation"].endswith(".png") for r in rows for m in r["records"])
    assert '"isthing"' in rows[0]["categories"]


def test_panoptic_images_in_the_subfolder_their_file_name_gives_are_found(tmp_path):
    """``images[].file_name`` may carry a folder under the image root (``train2017/x.jpg``); one that leaves
    the root is never listed."""
    root = write_panoptic_root(tmp_path / "p", 3)
    split = root / "annotations" / "panoptic_val2017.json"
    doc = json.loads(split.read_text())
    (root / "val2017" / "sub").mkdir()
    (root / "val2017" / "000000000002.jpg").rename(root / "val2017" / "sub" / "000000000002.jpg")
    (root / "val2017" / "000000000003.jpg").rename(tmp_path / "000000000003.jpg")
    doc["images"][0]["file_name"] = "./000000000001.jpg"  # the image folder itself, not listed twice
    doc["images"][1]["file_name"] = "sub/000000000002.jpg"
    doc["images"][2]["file_name"] = "../../000000000003.jpg"
    doc["annotations"].append(doc["annotations"][0] | {"file_name": "../../000000000004.png"})  # never read
    doc["annotations"].append(doc["annotations"][0] | {"file_name": "other/000000000001.png"})  # a second one of an image
    split.write_text(json.dumps(doc))
    (root / "val2017" / "sub" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (row,) = plan_groups(discover(str(root))[0], group_size=16, skip=set())
    assert {m["id"]: m["image"].endswith("val2017/sub/000000000002.jpg") for m in row["records"]} == {"000000000001": False, "000000000002": True}
    assert sorted((r["input"], r["reason"]) for r in row["rejects"]) == [
        ("p/val2017", "malformed_annotation"), ("p/val2017/000000000003", "missing_image"),
        ("p/val2017/other/000000000001.png", "duplicate_annotation"), ("p/val2017/sub/gone.jpg", "unreadable_name")]


@pytest.mark.parametrize("per_image_layout", [False, True])
def test_a_split_whose_annotation_file_went_since_the_listing_is_input_vanished(tmp_path, per_image_layout):
    """A producer replacing a split's json (or an Open Images csv) while a run starts: the unit is the reject a
    rerun reads again, not a malformed file."""
    (unit,) = discover(str(write_panoptic_root(tmp_path / "p", 2, per_image_layout)))
    gone = unit.categories_uri or unit.uri
    storage.delete(gone)
    (row,) = plan_groups(unit, group_size=16, skip=set())
    assert [(r["reason"], gone in r["detail"]) for r in row["rejects"]] == [(inputs.VANISHED, True)] and not row["records"]
    write_openimages(tmp_path / "oi")
    for name in ("oidv7-class-descriptions-boxable.csv", "validation-annotations-object-segmentation.csv"):
        (unit,) = discover(str(tmp_path / "oi"))
        (tmp_path / "oi" / name).rename(tmp_path / name)
        (row,) = plan_groups(unit, group_size=16, skip=set())
        assert [(r["reason"], name in r["detail"]) for r in row["rejects"]] == [(inputs.VANISHED, True)], name
        (tmp_path / name).rename(tmp_path / "oi" / name)


@pytest.mark.parametrize("per_image_layout", [False, True])
def test_two_images_of_one_panoptic_stem_use_the_named_one_and_report_the_other(tmp_path, per_image_layout):
    """x.jpg and x.webp beside one annotation: one was taken silently (the last listed), whichever it was."""
    root = write_panoptic_root(tmp_path / "p", 2, per_image_layout)
    shutil.copy(root / "val2017" / "000000000002.jpg", root / "val2017" / "000000000001.bmp")
    (unit,) = discover(str(root))
    (row,) = plan_groups(unit, group_size=16, skip=set())
    used, other = ("bmp", "jpg") if per_image_layout else ("jpg", "bmp")  # the split's json names the .jpg; else the first by name
    images = {m["id"]: m["image"] for m in row["records"]}
    assert images["000000000001"].endswith(f"000000000001.{used}") and images["000000000002"].endswith("000000000002.jpg")
    assert [(r["input"], r["reason"]) for r in row["rejects"]] == [(f"p/val2017/000000000001.{other}", "duplicate_image")]


def test_videos_are_found_recursively_and_named_by_relative_path(tmp_path):
    video = TESTDATA / "video" / "bikes.mp4"
    for rel in ("cam1/a.mp4", "cam2/a.mp4", "top.MOV"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(video, tmp_path / rel)
    (tmp_path / "cam1" / "notes.txt").write_text("not a video")
    units = discover_all([str(tmp_path), str(video)], discover_videos)
    assert [u.name for u in units] == ["cam1/a.mp4", "cam2/a.mp4", "top.MOV", "bikes.mp4"]
    assert {u.kind for u in units} == {"video"}
    (tmp_path / "linked.mp4").symlink_to(video)  # found in the folder or given itself: one URI, one unit
    found = {u.name: u.uri for u in discover_videos(str(tmp_path))}
    assert found["linked.mp4"] == discover_videos(str(video))[0].uri == str(video.resolve())


@pytest.mark.parametrize("loose", [False, True], ids=["zips", "loose"])
def test_open_images_split_plans_one_record_per_image_with_its_mask_locators(tmp_path, loose):
    ids = write_openimages(tmp_path / "oi", loose=loose)
    (unit,) = discover(str(tmp_path / "oi"))
    assert (unit.kind, unit.name) == ("openimages", "oi/validation")
    rows = plan_groups(unit, group_size=16, skip=set())
    records = {m["id"]: m for r in rows for m in r["records"]}
    assert sorted(records) == sorted(ids.values())
    person = records[ids["astronaut.png"]]
    assert len(person["masks"]) == 2
    assert person["masks"][0].startswith(str(tmp_path) if loose else "zip://")
    # its second row's mask is nowhere: known from the listing when loose, when read from a zip otherwise
    assert person["masks"][1] is None if loose else person["masks"][1].startswith("zip://")
    assert [(r["input"], r["reason"]) for r in rows[-1]["rejects"]] == [(f"oi/validation/{'f' * 16}", "missing_image")]
    categories = json.loads(rows[0]["categories"])
    assert categories["/m/01g317"] == {"name": "Person", "count": 3} and "/m/0zzzzz" not in categories


def test_open_images_root_without_class_names_is_a_one_line_error(tmp_path):
    write_openimages(tmp_path / "oi")
    (tmp_path / "oi" / "oidv7-class-descriptions-boxable.csv").unlink()
    with pytest.raises(InputError, match="class-descriptions"):
        discover(str(tmp_path / "oi"))


def test_open_images_rows_of_the_wrong_width_are_rejected_by_line_and_an_undecodable_csv_is_one_reject(tmp_path):
    ids = write_openimages(tmp_path / "oi")
    table = tmp_path / "oi" / "validation-annotations-object-segmentation.csv"
    header, *lines = table.read_bytes().splitlines()
    table.write_bytes(b"\n".join([header, lines[0], b"too,few,fields", *lines[1:]]) + b"\n\n\r\n")  # blank lines at the end
    (unit,) = discover(str(tmp_path / "oi"))
    rows = plan_groups(unit, group_size=16, skip=set())
    assert [(r["input"], r["reason"]) for row in rows for r in row["rejects"] if r["reason"] == "malformed_annotation"] == [
        ("oi/validation:3", "malformed_annotation")], "the wrong row only: blank lines are no records"
    assert sorted(m["id"] for row in rows for m in row["records"]) == sorted(ids.values())  # every good row still planned
    table.write_bytes(b"\n".join([header, lines[0], b"\xff\xfe not utf-8", *lines[1:]]) + b"\n")
    (row,) = plan_groups(unit, group_size=16, skip=set())
    assert not row["records"] and [(r["input"], r["reason"]) for r in row["rejects"]] == [("oi/validation", "malformed_csv")]


def test_an_open_images_row_repeating_an_earlier_rows_mask_is_one_reject_not_a_second_entity(tmp_path):
    ids = write_openimages(tmp_path / "oi")
    table = tmp_path / "oi" / "validation-annotations-object-segmentation.csv"
    header, *lines = table.read_bytes().splitlines()
    table.write_bytes(b"\n".join([header, *lines, lines[0], lines[0]]) + b"\n")  # a csv concatenated in part twice
    (unit,) = discover(str(tmp_path / "oi"))
    rows = plan_groups(unit, group_size=16, skip=set())
    mask, image = lines[0].decode().split(",")[:2]
    (record,) = [m for row in rows for m in row["records"] if m["id"] == image]
    assert [a["MaskPath"] for a in json.loads(record["annotation"])].count(mask) == 1 and len(record["masks"]) == len(json.loads(record["annotation"]))
    repeats = [r["input"] for row in rows for r in row["rejects"] if r["reason"] == "duplicate_annotation"]
    assert repeats == [f"oi/validation/{image}/{mask}"] * 2
    assert json.loads(rows[0]["categories"])["/m/01g317"]["count"] == 3, "repeats are not counted as the label's rows"
    committed = plan_groups(unit, group_size=16, skip={image})
    assert not [r for row in committed for r in row["rejects"] if r["reason"] == "duplicate_annotation"], "said once, not by every rerun"


def test_a_split_csv_streams_in_large_reads(monkeypatch):
    """On S3 each read of an input stream is one GET: a csv of hundreds of MB must not go 8 KiB at a time."""
    data = b"MaskPath,ImageID\n" + b"0123456789abcdef_m01g317_1.png,0123456789abcdef\n" * 100_000  # ~5 MB
    reads = []

    class Counting(io.RawIOBase):
        def __init__(self):
            self.data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            reads.append(size)
            return self.data.read(size)

    class Handler(pafs.FSSpecHandler):
        def open_input_stream(self, path):
            return pa.PythonFile(Counting(), mode="r")

    filesystem = pafs.PyFileSystem(Handler(fsspec.filesystem("file")))
    monkeypatch.setattr(storage, "resolve", lambda uri: (filesystem, uri))
    with inputs._csv_rows("s3://bucket/train-annotations-object-segmentation.csv") as rows:
        assert sum(1 for _ in rows) == 100_001
    assert len(reads) <= 4  # 8 KiB reads: ~600
