"""The output contract module: reject records, sample keys, reading an output's manifest and shards (local and S3)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pairmine import dataset, storage
from pairmine.dataset import Reject, sample_key


def test_reject_to_dict_has_the_rejects_table_columns():
    reject = Reject("u/r", "decode", "truncated_image", "ends early")
    assert reject.to_dict() == {"input": "u/r", "stage": "decode", "reason": "truncated_image", "detail": "ends early"}
    assert Reject("u/r", "read", "x").to_dict()["detail"] == ""
    assert list(reject.to_dict()) == list(dataset.REJECT_FIELDS) == dataset.REJECTS_SCHEMA.names[3:]


def test_a_verdict_is_placed_by_the_caller():
    why = Reject.because("area_too_small", "0.01 < 0.05")
    assert (why.input, why.stage) == ("", "")
    placed = why.at("u/r#3", "entity")
    assert placed == Reject("u/r#3", "entity", "area_too_small", "0.01 < 0.05") and why.input == ""


def test_rejects_are_immutable():
    with pytest.raises(AttributeError):
        Reject("u/r", "read", "x").reason = "y"


def test_sample_key_is_deterministic():
    assert sample_key("sa_000000.tar/sa_100", "abc123", 0) == sample_key("sa_000000.tar/sa_100", "abc123", 0)


@pytest.mark.parametrize(
    "other",
    [
        ("sa_000000.tar/sa_101", "abc123", 0),  # another record
        ("sa_000001.tar/sa_100", "abc123", 0),  # same stem in another unit
        ("sa_000000.tar/sa_100", "abc124", 0),  # another config
        ("sa_000000.tar/sa_100", "abc123", 1),  # another triplet of the same background
    ],
)
def test_sample_key_differs_when_any_input_differs(other):
    assert sample_key(*other) != sample_key("sa_000000.tar/sa_100", "abc123", 0)


@pytest.mark.parametrize(
    "record",
    ["sa_000000.tar/sa_100", "val2017/000000142238", "u/name with spaces.and.dots", "u/ünïcode/x:y", "u/" + "x" * 200],
)
def test_sample_key_is_webdataset_safe(record):
    key = sample_key(record, "cfg", 3)
    assert "." not in key and "/" not in key  # WebDataset splits extensions at the first dot
    assert re.fullmatch(r"[A-Za-z0-9_-]+", key)
    assert key.endswith("-03") and len(key) <= 48 + 1 + 10 + 1 + 2


def test_sample_key_starts_with_the_record_name():
    assert sample_key("sa_000000.tar/sa_100", "cfg", 0).startswith("sa_100-")


# --- reading an output ------------------------------------------------------------------------------


def _sample(key: str, pipeline: str) -> dict:
    return {"__key__": key} | {name: f"{key}:{name}".encode() for name in dataset.SAMPLE_FILES[pipeline]}


def _commit(output: str, name: str, samples: list[dict], pipeline: str = "syn4removal") -> bytes:
    """A shard and its manifest row, written the way the contract describes (independently of our writer)."""
    buffer = io.BytesIO()
    with wds.TarWriter(buffer) as tar:
        for sample in samples:
            tar.write(sample)
    data = buffer.getvalue()
    storage.write_bytes(storage.join(output, "shards", f"{name}.tar"), data)
    row = {"shard": f"shards/{name}.tar", "pipeline": pipeline, "run": "r1", "config_hash": "c0ffee", "version": "0",
           "samples": len(samples), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
           "keys": [s["__key__"] for s in samples], "inputs": [], "unit_totals": [], "rejects": 0, "created": int(time.time())}
    manifest = pa.Table.from_pylist([row], schema=dataset.MANIFEST_SCHEMA)
    storage.write_bytes(storage.join(output, "manifest", f"{name}.parquet"), dataset.to_parquet(manifest))
    return data


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    return f"s3://{request.getfixturevalue('s3_bucket')}/out"


def test_committed_shards_and_their_samples(output):
    _commit(output, "b", [_sample("k3", "syn4removal")])
    _commit(output, "a", [_sample("k1", "syn4removal"), _sample("k2", "syn4removal")])
    storage.write_bytes(storage.join(output, "shards", "orphan.tar"), b"never committed")
    shards = dataset.committed_shards(output)
    assert [s.name for s in shards] == ["a.tar", "b.tar"] and shards[0].keys == ("k1", "k2")
    samples = list(dataset.iter_samples(output))
    assert [s["__key__"] for s in samples] == ["k1", "k2", "k3"]
    assert samples[0]["mask.png"] == b"k1:mask.png" and not dataset.missing_files(samples[0], "syn4removal")


def test_an_empty_output_has_no_shards(output):
    assert dataset.read_manifest(output).num_rows == 0 and dataset.committed_shards(output) == []
    assert dataset.read_success(output) is None


def test_the_index_gives_the_same_rows_and_the_files_stay_the_truth(output):
    for name in ("a", "b", "c"):
        _commit(output, name, [_sample(f"{name}1", "syn4removal")])
    before = dataset.read_manifest(output).sort_by("shard")
    dataset.write_index(output)
    index = storage.join(output, dataset.INDEX, "manifest.parquet")
    assert storage.exists(index) and dataset.read_manifest(output).sort_by("shard").equals(before)
    cached = pq.read_table(io.BytesIO(storage.read_bytes(index)))
    shards = pa.array([v.replace("c.tar", "X.tar") for v in cached["shard"].to_pylist()])
    storage.write_bytes(index, dataset.to_parquet(cached.set_column(0, "shard", shards)))  # proves rows come from the index
    assert "shards/X.tar" in dataset.read_manifest(output, ["shard"])["shard"].to_pylist()
    _commit(output, "d", [_sample("d1", "syn4removal")])  # written after the index: read from its file
    storage.delete(storage.join(output, "manifest", "a.parquet"))  # a file gone: its cached row is not used
    assert sorted(dataset.read_manifest(output, ["shard"])["shard"].to_pylist()) == ["shards/X.tar", "shards/b.tar", "shards/d.tar"]
    time.sleep(0.01)
    _commit(output, "b", [_sample("b1", "syn4removal"), _sample("b2", "syn4removal")])  # rewritten since: its file, not the cache
    assert dataset.read_manifest(output, ["shard", "samples"]).sort_by("shard")["samples"].to_pylist() == [1, 2, 1]
    storage.write_bytes(index, b"PAR1 not an index")  # a bad index is skipped, not fatal
    assert sorted(dataset.read_manifest(output, ["shard"])["shard"].to_pylist()) == ["shards/b.tar", "shards/c.tar", "shards/d.tar"]
    dataset.write_index(output)
    assert sorted(dataset.read_manifest(output, ["shard"])["shard"].to_pylist()) == ["shards/b.tar", "shards/c.tar", "shards/d.tar"]


def test_a_manifest_temp_file_is_not_a_manifest(output):
    _commit(output, "a", [_sample("k1", "video4removal")], "video4removal")
    # a kill between a manifest's write and its rename leaves a temp file, possibly half written
    storage.write_bytes(storage.join(output, "manifest", ".tmp-0123-b.parquet"), b"PAR1 half")
    assert [s.name for s in dataset.committed_shards(output)] == ["a.tar"]


def test_a_shard_of_another_size_is_refused_before_any_sample(output):
    data = _commit(output, "a", [_sample("k1", "syn4removal")])
    storage.write_bytes(storage.join(output, "shards", "a.tar"), data[: len(data) // 2])
    with pytest.raises(dataset.ShardError, match="the manifest says"):
        next(dataset.iter_samples(output))


def test_a_shard_whose_bytes_changed_fails_its_checksum_before_any_sample(output):
    data = _commit(output, "a", [_sample("k1", "syn4removal")])
    changed = data.replace(b"k1:json", b"k1:JSON")
    assert len(changed) == len(data) and changed != data
    storage.write_bytes(storage.join(output, "shards", "a.tar"), changed)
    with pytest.raises(dataset.ShardError, match="sha256"):
        next(dataset.iter_samples(output))
    assert len(list(dataset.iter_samples(output, verify=False))) == 1


def test_the_contract_module_needs_neither_ray_nor_torch():
    code = (
        "import sys; import pairmine.dataset as d; d.read_manifest(sys.argv[1]);"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'cv2'));"
        "print(','.join(heavy))"
    )
    found = subprocess.run([sys.executable, "-c", code, os.devnull], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "", f"importing pairmine.dataset loaded {found.stdout.strip()}"


def test_a_verified_s3_shard_leaves_no_named_copy_in_the_temp_dir(s3_bucket, tmp_path, monkeypatch):
    """An S3 shard is staged while it is hashed; the copy was a named file, which a process killed mid-read left
    behind (up to shards.max_bytes each). It is now unnamed: gone with its handle."""
    output = f"s3://{s3_bucket}/out"
    _commit(output, "a", [_sample("k1", "syn4removal"), _sample("k2", "syn4removal")])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    samples = dataset.iter_samples(output)
    assert next(samples)["__key__"] == "k1"  # mid-read: the copy is open
    assert os.listdir(tmp_path) == []
    assert [s["__key__"] for s in samples] == ["k2"]
