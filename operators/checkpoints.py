"""Model weights given as a local path or an ``s3://`` URI, turned into a local path a model library can open.

An S3 object, or every object under a prefix (a Hugging Face model folder, say), is downloaded once per
machine into a cache (``$PAIRMINE_CACHE``, else ``~/.cache/pairmine``): each file to a temp name, then
renamed, and reused while its size and modification time match the object's. A lock lets the actors of
one node share a download. Only the configured S3 endpoint is contacted, never a model hub.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid

import pyarrow.fs as pafs

from .. import storage
from ..errors import UserError


class CheckpointError(UserError, ValueError):
    """Weights that are missing, unreadable or of another model; the message is one line for the user."""


def cache_dir() -> str:
    return os.environ.get("PAIRMINE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pairmine")


def check_exists(uri: str, what: str) -> None:
    """Fail fast (in a driver, before any actor starts) unless `uri` is a file or a non-empty prefix."""
    try:
        found = storage.info(uri).type != pafs.FileType.NotFound
    except storage.StorageError as exc:
        raise CheckpointError(f"{what} unreadable: {exc}") from None
    if not found:
        raise CheckpointError(f"{what} not found: {uri}")


def local_path(uri: str, what: str) -> str:
    """The local file or directory holding `uri`; `what` names it in errors ("CLIP ViT-B-32 checkpoint")."""
    if not storage.is_s3(uri):
        check_exists(uri, what)
        return os.path.abspath(uri)
    try:
        files = _s3_files(uri)
        if not files:
            raise CheckpointError(f"{what} not found: {uri}")
        root = os.path.join(cache_dir(), "s3", storage.resolve(uri)[1])
        with _locked(root):
            for relative, file_info in files.items():
                _download(file_info, os.path.join(root, relative) if relative else root)
    except storage.StorageError as exc:
        raise CheckpointError(f"{what} unreadable: {exc}") from None
    return root


def _s3_files(uri: str) -> dict[str, pafs.FileInfo]:
    """The object at `uri` (key "") or the objects under it by their path below it; empty if none."""
    found = storage.info(uri)
    if found.type == pafs.FileType.File:
        return {"": found}
    prefix = storage.resolve(uri)[1] + "/"
    files = {}
    for entry in storage.list_dir(uri, recursive=True):
        relative = entry.path[len(prefix) :]
        if entry.type != pafs.FileType.File:
            continue
        if os.path.isabs(relative) or ".." in relative.split("/"):
            raise storage.StorageError(f"refusing the object {storage.S3}{entry.path}: its key leaves {uri}")
        files[relative] = entry
    return files


@contextlib.contextmanager
def _locked(root: str):
    """One download per cache entry at a time across the processes of this machine."""
    os.makedirs(os.path.dirname(root), exist_ok=True)
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _download(file_info: pafs.FileInfo, dest: str) -> None:
    """Copy one S3 object to `dest` unless an identical copy (size, whole-second mtime) is there."""
    mtime_ns = file_info.mtime_ns or 0
    if os.path.isfile(dest):
        st = os.stat(dest)
        if st.st_size == file_info.size and st.st_mtime_ns // 10**9 == mtime_ns // 10**9:
            return
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = os.path.join(os.path.dirname(dest), f".tmp-{uuid.uuid4().hex}-{os.path.basename(dest)}")
    try:
        with storage.s3_filesystem().open_input_stream(file_info.path) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, dest)
    except OSError as exc:
        raise storage.StorageError(f"cannot download {storage.S3}{file_info.path}: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
