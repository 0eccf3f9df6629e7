"""Syn4Removal end to end on a local Ray: contract of every sample, rejects, reruns, S3."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter

import boto3
import pytest
import ray
from helpers import check_sample, read_parquet_dir, read_samples, shard_paths
from openimages_fixture import OBJECTS, UNKNOWN_LABEL, write_openimages
from sample_inputs import TESTDATA, write_loose_sa1b, write_panoptic_root, write_sa1b_tars

from pairmine.pipelines.run import run
from pairmine.pipelines.syn4removal import SYN4REMOVAL
from pairmine.pipelines.writer import OutputConflict

SA1B_TAR = str(TESTDATA / "sa1b" / "sa_000000.tar")
EXPECTED_BAD = {  # input id -> (stage, reason), from testdata/README.md
    "sa_000000.tar/sa_900001": ("decode", "truncated_image"),
    "sa_000000.tar/sa_900002": ("annotation", "malformed_json"),
    "sa_000000.tar/sa_900003": ("background", "annotations_invalid"),
    "sa_000000.tar/sa_900004": ("decode", "image_too_large"),
    "sa_000000.tar/sa_900005": ("read", "missing_image"),
}


def _run(inputs, output, *overrides):
    return run(SYN4REMOVAL, [str(i) for i in inputs], str(output), overrides=list(overrides), progress_bars=False)


def _keys(output) -> list[str]:
    return [s["__key__"] for s in read_samples(str(output))]


def test_every_sample_meets_the_contract_and_every_bad_record_is_rejected(tmp_path, ray_local):
    out = tmp_path / "out"
    summary = _run([SA1B_TAR], out)
    samples = read_samples(str(out))
    assert samples, "the sample tar yields triplets"
    metas = [check_sample(s, "syn4removal") for s in samples]
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys))
    assert all(m["entity"]["source"] != m["background"]["id"] for m in metas), "entity pasted into its own image"
    assert not any("model" in m for m in metas), "the annotation scorer is no model"

    rejects = read_parquet_dir(str(out / "rejects"))
    by_input = {(r["input"], r["stage"], r["reason"]) for r in rejects}
    for input_id, (stage, reason) in EXPECTED_BAD.items():
        assert (input_id, stage, reason) in by_input, f"{input_id} not rejected with {stage}/{reason}"
    assert any(r["reason"] == "unsafe_member" and "../../sa_900006" in r["input"] for r in rejects)
    assert sum(r["reason"] == "rle_size_mismatch" and r["input"].startswith("sa_000000.tar/sa_900003#") for r in rejects) == 57
    assert all(r["detail"] for r in rejects if r["stage"] in ("read", "decode", "annotation"))

    assert summary["written"]["samples"] == len(samples)
    assert summary["rejects"]["total"] == len(rejects)
    assert summary["rejects"]["by_reason"] == dict(Counter(f"{r['stage']}/{r['reason']}" for r in rejects))
    assert json.loads((out / "_SUCCESS").read_text())["run"] == summary["run"]


def test_manifest_lists_complete_shards_readable_by_webdataset_and_ray(tmp_path, loose_sa1b, ray_local):
    out = tmp_path / "out"
    _run([SA1B_TAR, loose_sa1b], out, "shards.max_samples=2", "group_size=2")
    manifest = read_parquet_dir(str(out / "manifest"))
    listed = sorted(str(out / r["shard"]) for r in manifest if r["shard"])
    assert listed == shard_paths(str(out)) and len(listed) >= 2
    for row in manifest:
        if row["shard"]:
            data = (out / row["shard"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row["sha256"] and len(data) == row["bytes"]
    consumed = sorted(i for r in manifest for entry in r["inputs"] for i in entry["ids"])
    assert len(consumed) == len(set(consumed)) == 11 + 12, "every input id consumed exactly once"
    keys = _keys(out)
    assert sorted(keys) == sorted(k for r in manifest for k in r["keys"])
    ds = ray.data.read_webdataset([str(p) for p in listed])
    assert sorted(r["__key__"] for r in ds.take_all()) == sorted(keys)


def test_rerun_is_idempotent_and_outputs_are_deterministic(tmp_path, ray_local):
    first, again = tmp_path / "a", tmp_path / "b"
    _run([SA1B_TAR], first)
    manifest_before = sorted(os.listdir(first / "manifest"))
    summary = _run([SA1B_TAR], first)
    assert summary["units"] == {"given": 1, "planned": 0, "already_complete": 1}
    assert sorted(os.listdir(first / "manifest")) == manifest_before and (first / "_SUCCESS").exists()
    _run([SA1B_TAR], again)
    a, b = read_samples(str(first)), read_samples(str(again))
    assert [s["__key__"] for s in a] == [s["__key__"] for s in b]
    assert [s["source.jpg"] for s in a] == [s["source.jpg"] for s in b], "same config + inputs => same bytes"


def test_another_config_on_the_same_output_is_refused(tmp_path, ray_local):
    _run([SA1B_TAR], tmp_path / "out", "ray.num_cpus=1")
    with pytest.raises(OutputConflict, match=r"config .*; changed: placement.size_jitter, seed\)"):  # runtime keys are not named
        _run([SA1B_TAR], tmp_path / "out", "seed=7", "placement.size_jitter=0.1")


def test_resume_after_partial_commit_finishes_without_duplicates(tmp_path, ray_local):
    """A run that committed only some shards (the others lost or orphaned) is finished by a rerun."""
    loose = tmp_path / "loose"
    write_loose_sa1b(loose, 12)
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    _run([loose], clean, "group_size=2", "shards.max_samples=2")
    _run([loose], resumed, "group_size=2", "shards.max_samples=2")
    manifests = sorted((resumed / "manifest").iterdir())
    assert len(manifests) >= 3
    for lost in manifests[1::2]:  # as if killed after the shard upload but before its manifest row
        lost.unlink()
    (resumed / "shards" / ".tmp-half-written.tar").write_bytes(b"partial")
    _run([loose], resumed, "group_size=2", "shards.max_samples=2")
    keys = _keys(resumed)
    assert len(keys) == len(set(keys)), "no duplicate samples after the resume"
    assert sorted(keys) == sorted(_keys(clean)), "the resumed output equals an uninterrupted one"
    assert not any(p.name.startswith(".tmp-") for p in (resumed / "shards").iterdir())


def test_new_inputs_are_processed_incrementally(tmp_path, ray_local):
    loose = tmp_path / "loose"
    old = write_loose_sa1b(loose, 6)
    out = tmp_path / "out"
    _run([loose], out, "group_size=3")
    before = set(_keys(out))
    new = write_loose_sa1b(loose, 6, first=2000)
    summary = _run([loose], out, "group_size=3")
    added = set(_keys(out)) - before
    assert before <= set(_keys(out)) and added
    sources = {json.loads(s["json"])["background"]["id"].split("/")[-1] for s in read_samples(str(out)) if s["__key__"] in added}
    assert sources <= set(new) and not sources & set(old)
    assert summary["counts"]["records"] == len(new)


def test_inputs_are_known_by_location_not_by_name(tmp_path, ray_local):
    """Per-day folders repeat file names: another day's tar is not skipped as done, the same tar given by its
    own path is not mined twice, and a tar rewritten since a run read it is read again."""
    from pairmine.pipelines.verify import verify

    days = [tmp_path / "in" / day for day in ("day1", "day2")]
    for day in days:
        write_sa1b_tars(day, tars=1, per_tar=2)  # both named sa_000000.tar
    out = tmp_path / "out"
    _run([days[0]], out)
    second = _run([days[1]], out)
    assert second["units"] == {"given": 1, "planned": 1, "already_complete": 0}
    assert _run([tmp_path / "in" / "day1" / "sa_000000.tar", days[1]], out)["units"]["already_complete"] == 2
    assert not verify(str(out), [str(d) for d in days]).problems
    with open(days[0] / "sa_000000.tar", "ab") as tar:  # rewritten in place: another size
        tar.write(bytes(10240))
    assert _run([days[0]], out)["units"]["planned"] == 1
    report = verify(str(out), [str(d) for d in days])
    assert not report.problems, "a rewritten file's second read is by design, not a broken contract"
    size = (days[0] / "sa_000000.tar").stat().st_size
    assert len(report.notes) == 1 and "day1/sa_000000.tar changed between runs" in report.notes[0]
    assert f"{size - 10240} bytes as sa_000000.tar, {size} bytes as sa_000000.tar~" in report.notes[0], report.notes


def test_a_tar_gone_since_it_was_listed_is_a_reject_and_a_rerun_reads_it(tmp_path, ray_local):
    """A producer moving files while a run starts: the run completes, says which tar went, and does not count it
    done; back in place, the next run mines it."""
    import dataclasses

    tars = write_sa1b_tars(tmp_path / "in", tars=3, per_tar=2)
    aside = tmp_path / "aside.tar"

    def discover_then_move(args):
        units = SYN4REMOVAL.discover(args)
        tars[0].rename(aside)  # after the listing, before the read
        return units

    out = tmp_path / "out"
    first = run(dataclasses.replace(SYN4REMOVAL, discover=discover_then_move), [str(tmp_path / "in")], str(out), progress_bars=False)
    assert first["rejects"]["by_reason"].get("read/input_vanished") == 1
    assert {r["input"] for r in read_parquet_dir(str(out / "rejects")) if r["reason"] == "input_vanished"} == {"sa_000000.tar"}
    aside.rename(tars[0])
    again = _run([tmp_path / "in"], out)
    assert again["units"] == {"given": 3, "planned": 1, "already_complete": 2}
    from pairmine.pipelines.verify import verify

    assert not verify(str(out), [str(tmp_path / "in")]).problems


def test_a_tar_gone_before_its_read_task_opens_it_is_the_same_reject(tmp_path, ray_local):
    from pairmine.pipelines.readers import SA1BTarDatasource

    tars = write_sa1b_tars(tmp_path / "in", tars=2, per_tar=2)
    source = SA1BTarDatasource([str(t) for t in tars], filesystem=None, units={str(t): t.name for t in tars}, skip={}, group_size=2,
                               max_file_bytes=1 << 30)
    tars[1].unlink()
    rows = [row for task in source.get_read_tasks(2) for block in task() for row in block.to_pylist()]
    gone = [r for r in rows if r["unit"] == tars[1].name]
    assert [(r["rejects"][0]["reason"], r["consumed"], r["unit_total"]) for r in gone] == [("input_vanished", [], -1)]
    assert sum(len(r["records"]) for r in rows if r["unit"] == tars[0].name) == 2


@pytest.mark.parametrize("per_image_layout", [False, True], ids=["global-json", "per-image-json"])
def test_panoptic_root_in_both_layouts(tmp_path, ray_local, per_image_layout):
    root = write_panoptic_root(tmp_path / "coco", copies=3, per_image_layout=per_image_layout)
    out = tmp_path / "out"
    _run([root], out, "entities.min_area_ratio=0.005", "placement.min_paste_area_ratio=0.005")  # COCO's people are small
    metas = [check_sample(s, "syn4removal") for s in read_samples(str(out))]
    assert metas and all(m["entity"]["category"] for m in metas)
    assert any(m["paste"]["size_rule"] == "same_category" for m in metas)


@pytest.mark.parametrize("where", ["local-zips", "s3-loose"])
def test_open_images_split_yields_triplets_and_rejects_its_bad_rows(tmp_path, ray_local, where, request):
    root = tmp_path / "oidv7"
    ids = write_openimages(root, loose=where == "s3-loose")
    source = str(root)
    if where == "s3-loose":
        bucket = request.getfixturevalue("s3_bucket")
        s3 = boto3.client("s3")
        for path in root.rglob("*"):
            if path.is_file():
                s3.upload_file(str(path), bucket, f"oi/{path.relative_to(root)}")
        source = f"s3://{bucket}/oi"
    out, small = tmp_path / "out", ["entities.min_area_ratio=0.01", "placement.min_paste_area_ratio=0.01"]
    summary = _run([f"openimages:{source}"], out, *small)
    metas = [check_sample(s, "syn4removal") for s in read_samples(str(out))]
    assert metas, "the fixture yields triplets"
    names = {name for _, _, name, _ in OBJECTS}
    assert all(m["entity"]["category"] in names and m["entity"]["scores"]["predicted_iou"] == 0.9 for m in metas)
    assert all(m["blending"]["method"] == "matting" for m in metas)
    unit = f"{root.name if where == 'local-zips' else 'oi'}/validation"
    rejects = {(r["input"], r["reason"]) for r in read_parquet_dir(str(out / "rejects"))}
    person, cat = ids[OBJECTS[0][0]], ids[OBJECTS[1][0]]
    for expected in [(f"{unit}/{person}#1", "missing_mask"), (f"{unit}/{cat}#1", "mask_size_mismatch"),
                     (f"{unit}/{cat}#2", "unknown_category"), (f"{unit}/{'f' * 16}", "missing_image")]:
        assert expected in rejects, f"{expected} not among {sorted(rejects)}"
    assert not any(UNKNOWN_LABEL in json.dumps(m) for m in metas)
    assert summary["counts"]["images"] == len(ids)
    rare = _run([f"openimages:{source}"], tmp_path / "rare", *small, "entities.min_class_entities=2")
    # Person has 3 rows in the csv, Cat 2, the others 1: their entities go, every image still receives pastes
    assert rare["rejects"]["by_reason"].get("entity/rare_class") == 3 and rare["counts"]["backgrounds_kept"] == len(ids)


def test_quality_statistics_and_the_near_duplicate_cap(tmp_path, ray_local):
    """Every pasted entity's hash and signals reach the manifest and the summary; a cap of 1 per bucket
    keeps one paste of each entity (an entity may be pasted twice: max_entity_uses)."""
    settings = ["pairing.pairs_per_background=3", "pairing.max_entity_uses=2"]
    free = _run([SA1B_TAR], tmp_path / "free", *settings)
    capped = _run([SA1B_TAR], tmp_path / "capped", *settings, "dedup.max_per_bucket=1")
    manifest = read_parquet_dir(str(tmp_path / "free" / "manifest"))
    hashes = Counter(h for r in manifest for h in r["phashes"])
    assert max(hashes.values()) > 1, "some entity was pasted twice"
    metas = {json.loads(s["json"])["key"]: json.loads(s["json"]) for s in read_samples(str(tmp_path / "free"))}
    for row in manifest:
        for key, phash, quality in zip(row["keys"], row["phashes"], row["quality"]):
            assert metas[key]["phash"] == phash and dict(quality) == metas[key]["quality"]
    seams = sorted(m["quality"]["seam"] for m in metas.values())
    assert free["quality"]["seam"]["count"] == len(metas) and seams[0] <= free["quality"]["seam"]["p50"] <= seams[-1]
    kept = Counter(h for r in read_parquet_dir(str(tmp_path / "capped" / "manifest")) for h in r["phashes"])
    assert set(kept) == set(hashes) and max(kept.values()) == 1
    assert capped["rejects"]["by_reason"]["dedup/near_duplicate"] == sum(hashes.values()) - len(hashes)


def test_s3_inputs_and_outputs_through_the_s3_protocol(tmp_path, ray_local, s3_bucket, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    s3 = boto3.client("s3")
    s3.upload_file(SA1B_TAR, s3_bucket, "in/sa1b/sa_000000.tar")
    loose = tmp_path / "loose"
    for stem in write_loose_sa1b(loose, 4):
        for ext in ("jpg", "json"):
            s3.upload_file(str(loose / f"{stem}.{ext}"), s3_bucket, f"in/loose/{stem}.{ext}")
    output = f"s3://{s3_bucket}/out/run1"
    summary = _run([f"s3://{s3_bucket}/in/sa1b/", f"s3://{s3_bucket}/in/loose"], output)
    listing = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="out/run1/")["Contents"]]
    shards = [k for k in listing if k.startswith("out/run1/shards/") and k.endswith(".tar")]
    assert shards and any(k.startswith("out/run1/manifest/") for k in listing) and "out/run1/_SUCCESS" in listing
    assert any(k.startswith("out/run1/logs/") for k in listing) and not list(scratch.glob("pairmine-log-*")), "the run log's local copy was left"
    local = tmp_path / "mirror"
    for key in listing:
        assert not key.endswith("/"), f"a directory-marker object in the output: {key}"
        target = local / key.removeprefix("out/run1/")
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(s3_bucket, key, str(target))
    samples = read_samples(str(local))
    assert len(samples) == summary["written"]["samples"] > 0
    for sample in samples:
        check_sample(sample, "syn4removal")
    assert any(r["reason"] == "truncated_image" for r in read_parquet_dir(str(local / "rejects")))
    again = _run([f"s3://{s3_bucket}/in/sa1b/sa_000000.tar", f"s3://{s3_bucket}/in/loose"], output)
    assert again["units"]["already_complete"] == 1 and again["written"]["samples"] == 0, "the rerun redid work"
    assert again["output_totals"]["samples"] == len(samples)
