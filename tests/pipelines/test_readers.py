"""Reading SA-1B tars as a stream and planned groups, with every bad member turned into a reject."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile

import ray
from openimages_fixture import write_openimages
from sample_inputs import TESTDATA, sa1b_members, write_loose_sa1b

from pairmine.pipelines.inputs import discover, plan_groups
from pairmine.pipelines.readers import READER_SCHEMA, PlannedGroupsDatasource, SA1BTarDatasource, _archive, load_planned_row, tar_items

SA1B_TAR = TESTDATA / "sa1b" / "sa_000000.tar"


def _items(data: bytes, max_file_bytes: int = 1 << 30):
    return list(tar_items(io.BytesIO(data), "u.tar", max_file_bytes))


def _tar(entries: list[tuple[str, bytes]], link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return buf.getvalue()


def test_the_sample_tar_pairs_members_and_rejects_the_unsafe_and_orphans():
    items = _items(SA1B_TAR.read_bytes())
    records = {i: r for i, r in items if isinstance(r, dict)}
    rejects = {r.input: r.reason for _, r in items if not isinstance(r, dict)}
    members = sa1b_members()
    assert set(records) == {s for s, m in members.items() if "jpg" in m and "json" in m and not s.startswith("..")}
    assert all(records[s]["image"] == members[s]["jpg"] and records[s]["annotation"] == members[s]["json"] for s in records)
    assert rejects == {"u.tar/../../sa_900006.jpg": "unsafe_member", "u.tar/sa_900005": "missing_image"}


def test_a_truncated_tar_keeps_what_came_before_and_says_where_it_broke():
    data = SA1B_TAR.read_bytes()
    items = _items(data[: len(data) // 2])
    records = [i for i, r in items if isinstance(r, dict)]
    truncated = [r for i, r in items if i is None and not isinstance(r, dict)]
    assert records and len(records) < 9
    assert [r.reason for r in truncated] == ["truncated_tar"] and truncated[0].input == "u.tar"


def test_oversized_unexpected_and_link_members_are_rejected():
    members = sa1b_members()["sa_100"]
    limit = max(len(members["jpg"]), len(members["json"]))
    big = b"x" * (limit + 1)
    data = _tar([("a.jpg", members["jpg"]), ("a.json", members["json"]), ("notes.txt", b"hi"), ("b.json", big)], link="c.jpg")
    items = _items(data, max_file_bytes=limit)
    assert [i for i, r in items if isinstance(r, dict)] == ["a"]
    assert sorted(r.reason for _, r in items if not isinstance(r, dict)) == ["file_too_large", "unexpected_member", "unsafe_member"]


def test_a_link_after_its_records_members_is_a_reject_too():
    """It was dropped without a reject. The members of a record rejected for an unsafe one are that reject."""
    members = sa1b_members()["sa_100"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, link in (("a.jpg", None), ("a.json", None), ("a.png", "/etc/passwd"), ("b.jpg", "/etc/passwd"), ("b.jpg", "/etc/passwd")):
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                payload = members["jpg" if name.endswith("jpg") else "json"]
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    items = _items(buf.getvalue())
    assert [i for i, r in items if isinstance(r, dict)] == ["a"]
    assert [(i, r.input, r.reason) for i, r in items if not isinstance(r, dict)] == [
        (None, "u.tar/a.png", "unsafe_member"), ("b", "u.tar/b.jpg", "unsafe_member")]


def test_a_compressed_tar_and_dot_slash_names_pair_like_a_plain_tar():
    """A gzip tar was `truncated_tar ... after 0 records`; `./a.jpg` (tar -C dir .) did not pair with `a.json`."""
    members = sa1b_members()["sa_100"]
    plain = _tar([("./a.jpg", members["jpg"]), ("a.json", members["json"]), ("./b/c.jpg", members["jpg"]), ("./b/c.json", members["json"])])
    for data in (plain, gzip.compress(plain)):
        items = _items(data)
        assert [(i, r["image"] == members["jpg"]) for i, r in items if isinstance(r, dict)] == [("a", True), ("b/c", True)]
        assert [r for _, r in items if not isinstance(r, dict)] == []


def test_a_gzip_tar_is_found_by_its_name_and_read_end_to_end(tmp_path):
    (tmp_path / "sa_000000.tar.gz").write_bytes(gzip.compress(SA1B_TAR.read_bytes()))
    assert [(u.kind, u.name) for u in discover(str(tmp_path))] == [("sa1b-tar", "sa_000000.tar.gz")]
    (unit,) = discover(str(tmp_path / "sa_000000.tar.gz"))
    with open(unit.uri, "rb") as stream:
        records = [i for i, r in tar_items(stream, unit.name, 1 << 30) if isinstance(r, dict)]
    assert records == [i for i, r in _items(SA1B_TAR.read_bytes()) if isinstance(r, dict)] and records


def test_unreadable_planned_files_become_rejects(tmp_path):
    folder = tmp_path / "loose"
    write_loose_sa1b(folder, 3)
    (unit,) = discover(str(folder))
    (row,) = plan_groups(unit, group_size=8, skip=set())
    (folder / "sa_1001.jpg").unlink()
    loaded = load_planned_row(row, max_file_bytes=1 << 30)
    assert [r["id"] for r in loaded["records"]] == ["sa_1000", "sa_1002"]
    assert [(r["input"], r["reason"]) for r in loaded["rejects"]] == [("loose/sa_1001", "unreadable_file")]


def test_datasources_emit_reader_rows_through_ray(tmp_path, ray_local):
    import pyarrow.fs as pafs

    tar_rows = ray.data.read_datasource(
        SA1BTarDatasource([str(SA1B_TAR)], filesystem=pafs.LocalFileSystem(), units={str(SA1B_TAR): "sa.tar"},
                          skip={"sa.tar": {"sa_100"}}, group_size=2, max_file_bytes=1 << 30)
    ).take_all()
    assert sum(len(r["records"]) for r in tar_rows) == 8 and tar_rows[-1]["unit_total"] == 11
    assert sorted(i for r in tar_rows for i in r["consumed"]) == sorted({"sa_142238", "sa_101", "sa_102", "sa_103", "sa_900001",
                                                                          "sa_900002", "sa_900003", "sa_900004", "sa_900005", "../../sa_900006"})
    write_loose_sa1b(tmp_path / "loose", 5)
    (unit,) = discover(str(tmp_path / "loose"))
    planned = ray.data.read_datasource(PlannedGroupsDatasource(plan_groups(unit, 2, set()), 1 << 30)).take_all()
    assert [len(r["records"]) for r in planned] == [2, 3] and all(isinstance(m["image"], bytes) for r in planned for m in r["records"])
    assert set(planned[0]) == set(READER_SCHEMA.names)


def test_open_images_masks_are_read_from_their_zips_and_a_missing_one_is_null(tmp_path):
    ids = write_openimages(tmp_path / "oi")
    (unit,) = discover(str(tmp_path / "oi"))
    (row,) = plan_groups(unit, group_size=16, skip=set())
    loaded = {r["id"]: r for r in load_planned_row(row, max_file_bytes=1 << 30)["records"]}
    person = loaded[ids["astronaut.png"]]
    assert person["masks"][0].startswith(b"\x89PNG") and person["masks"][1] is None
    assert person["image"].startswith(b"\xff\xd8")
    archive = tmp_path / "oi" / f"validation-masks-{ids['astronaut.png'][0]}.zip"
    with zipfile.ZipFile(archive) as flat, zipfile.ZipFile(tmp_path / "refolded.zip", "w") as refolded:
        for info in flat.infolist():  # re-zipped from an unpacked folder: every member under validation-masks/
            refolded.writestr(f"validation-masks/{info.filename}", flat.read(info))
    (tmp_path / "refolded.zip").replace(archive)
    _archive.cache_clear()
    again = {r["id"]: r for r in load_planned_row(row, max_file_bytes=1 << 30)["records"]}
    assert again[ids["astronaut.png"]]["masks"] == person["masks"], "found in its folder, the missing one still null"
    (tmp_path / "oi" / f"validation-masks-{ids['chelsea.png'][0]}.zip").write_bytes(b"not a zip")
    _archive.cache_clear()
    broken = load_planned_row(row, max_file_bytes=1 << 30)
    assert (f"oi/validation/{ids['chelsea.png']}", "unreadable_file") in {(r["input"], r["reason"]) for r in broken["rejects"]}
