"""checkpoints.local_path: local files and folders as they are; s3:// objects and prefixes cached once (moto S3)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from pairmine.operators.checkpoints import CheckpointError, local_path


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAIRMINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def put(bucket: str, key: str, body: bytes) -> None:
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body)


def all_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_local_files_and_folders_are_used_in_place(tmp_path, monkeypatch, cache):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.pt").write_bytes(b"w")
    monkeypatch.chdir(tmp_path)
    assert local_path("model/weights.pt", "CLIP checkpoint") == str(tmp_path / "model" / "weights.pt")
    assert local_path(str(tmp_path / "model"), "CLIP checkpoint") == str(tmp_path / "model")
    assert not cache.exists(), "local weights are never copied"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_missing_weights_are_a_one_line_checkpoint_error(where, tmp_path, request):
    uri = str(tmp_path / "clip.pt") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/clip.pt"
    with pytest.raises(CheckpointError) as caught:
        local_path(uri, "CLIP ViT-B-32 checkpoint")
    assert str(caught.value) == f"CLIP ViT-B-32 checkpoint not found: {uri}"
    assert isinstance(caught.value, ValueError)


def test_s3_file_is_downloaded_once_and_refreshed_when_it_changes(s3_bucket, cache):
    put(s3_bucket, "clip/v1.pt", b"weights" * 1000)
    path = local_path(f"s3://{s3_bucket}/clip/v1.pt", "CLIP checkpoint")
    assert path.startswith(str(cache)) and open(path, "rb").read() == b"weights" * 1000
    inode = os.stat(path).st_ino
    assert local_path(f"s3://{s3_bucket}/clip/v1.pt", "CLIP checkpoint") == path
    assert os.stat(path).st_ino == inode, "an identical cached copy is reused, not downloaded again"

    put(s3_bucket, "clip/v1.pt", b"retrained")  # another size
    assert open(local_path(f"s3://{s3_bucket}/clip/v1.pt", "CLIP checkpoint"), "rb").read() == b"retrained"
    with open(path, "wb") as f:
        f.write(b"tampered!")
    os.utime(path, (0, 0))  # same size, another modification time: not the object's copy any more
    assert open(local_path(f"s3://{s3_bucket}/clip/v1.pt", "CLIP checkpoint"), "rb").read() == b"retrained"
    assert all_files(cache) == [f"s3/{s3_bucket}/clip/v1.pt", f"s3/{s3_bucket}/clip/v1.pt.lock"], "no temp files left"


@pytest.mark.parametrize("suffix", ["", "/"])
def test_s3_prefix_becomes_a_local_folder(s3_bucket, suffix):
    files = {"config.json": b"{}", "tokenizer/vocab.txt": b"a\nb", "model.safetensors": b"\0" * 4096}
    for name, body in files.items():
        put(s3_bucket, f"hf/model/{name}", body)
    put(s3_bucket, "hf/model-other/x", b"not under the prefix")
    folder = local_path(f"s3://{s3_bucket}/hf/model{suffix}", "text encoder")
    assert os.path.isdir(folder)
    assert all_files(folder) == sorted(files)
    assert {name: open(os.path.join(folder, name), "rb").read() for name in files} == files


def test_s3_keys_that_climb_out_of_the_prefix_are_refused(s3_bucket):
    put(s3_bucket, "m/ok.bin", b"1")
    put(s3_bucket, "m/../escape.bin", b"2")
    with pytest.raises(CheckpointError, match=r"text encoder unreadable: .*escape\.bin.* leaves s3://"):
        local_path(f"s3://{s3_bucket}/m", "text encoder")


def test_concurrent_callers_get_one_intact_copy(s3_bucket, cache):
    body = os.urandom(1 << 20)
    put(s3_bucket, "big.pt", body)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: local_path(f"s3://{s3_bucket}/big.pt", "CLIP checkpoint"), range(4)))
    assert len(set(paths)) == 1 and open(paths[0], "rb").read() == body
    assert all_files(cache) == [f"s3/{s3_bucket}/big.pt", f"s3/{s3_bucket}/big.pt.lock"]
