"""Local paths and ``s3://`` URIs behind one small API.

S3 settings come only from the standard AWS environment (``AWS_ENDPOINT_URL[_S3]``, the
credentials chain, ``AWS_REGION``, ``AWS_MAX_ATTEMPTS``), read the same way by pyarrow (reads,
listings, small writes) and boto3 (shard uploads), so one command runs against AWS, MinIO or a local
moto server. Throttling (503 SlowDown), 5xx answers and cut connections are retried with backoff by
both clients, ``AWS_MAX_ATTEMPTS`` times (default 10: a busy bucket throttles for seconds, not
milliseconds); every write is idempotent, so a retried request never duplicates anything.
Every write is atomic: a temp file renamed into place locally; on S3 an object exists only once
its upload completes (boto3 aborts an unfinished multipart upload).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import posixpath
import shutil
import socket
import tempfile
import uuid

import pyarrow.fs as pafs

from .errors import UserError

S3 = "s3://"


class StorageError(UserError, RuntimeError):
    """A path that cannot be read or written; the message is one line for the user."""


def is_s3(uri: str) -> bool:
    return uri.startswith(S3)


def _bucket_key(uri: str) -> tuple[str, str]:
    """The bucket and key of an s3:// URI, for the boto3 calls."""
    bucket, _, key = uri[len(S3) :].partition("/")
    return bucket, key


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _max_attempts() -> int:
    return int(os.environ.get("AWS_MAX_ATTEMPTS") or 10)


PART_BYTES = int(float(os.environ.get("PAIRMINE_S3_PART_MB") or 16) * 2**20)  # shard uploads above this go in parts of this size


# What the S3 clients are built from: one client per value of these, so a process whose environment changes (a
# notebook switching stores, a test's proxy) does not keep talking to the old endpoint with the old keys
_S3_ENVIRONMENT = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
                   "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _s3_environment() -> tuple[str | None, ...]:
    return tuple(os.environ.get(name) for name in _S3_ENVIRONMENT)


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem for the current AWS environment."""
    return _s3_filesystem(_s3_environment())


@functools.cache
def _s3_filesystem(environment: tuple[str | None, ...]) -> pafs.S3FileSystem:
    kwargs = {"connect_timeout": 5, "request_timeout": 60, "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=_max_attempts())}
    if _endpoint():
        kwargs["endpoint_override"] = _endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def _s3_client():
    """boto3's S3 client for the current AWS environment."""
    return _boto3_client(_s3_environment())


@functools.cache
def _boto3_client(environment: tuple[str | None, ...]):
    import boto3
    from botocore.config import Config

    # "adaptive" adds client-side rate limiting on throttling to "standard"'s backoff and retry set
    retries = {"max_attempts": _max_attempts(), "mode": os.environ.get("AWS_RETRY_MODE") or "adaptive"}
    return boto3.client("s3", config=Config(retries=retries, connect_timeout=5, read_timeout=60))


@functools.cache
def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and in-filesystem path of a local path or s3:// URI."""
    if is_s3(uri):
        return s3_filesystem(), uri[len(S3) :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def normalize(uri: str) -> str:
    """One spelling per place: an absolute local path with links resolved, an s3:// URI without repeated or trailing slashes."""
    if is_s3(uri):
        return S3 + "/".join(part for part in uri[len(S3) :].split("/") if part)
    return os.path.realpath(os.path.abspath(uri))


def absolute(uri: str) -> str:
    """A local path made absolute against this process's folder (a Ray Train worker runs in another one); an
    s3:// URI as given."""
    return uri if is_s3(uri) else os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def escapes(name: str) -> bool:
    """Whether a relative name (a tar member, a file name an annotation gives) points outside its folder."""
    normal = posixpath.normpath(name)
    return name.startswith("/") or normal == ".." or normal.startswith("../")


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def info(uri: str) -> pafs.FileInfo:
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path)
    except OSError as exc:
        raise StorageError(f"cannot reach {uri}: {first_line(exc)}") from None


def exists(uri: str) -> bool:
    return info(uri).type != pafs.FileType.NotFound


def list_dir(uri: str, recursive: bool = False) -> list[pafs.FileInfo]:
    """Entries below a directory or prefix, sorted by path; empty if it does not exist.

    A local name that is not valid UTF-8 cannot be opened through this API: it is listed with its
    bytes escaped (``printable``) and the type ``FileType.Unknown``, for the caller to reject by name;
    a link to nothing is listed as ``FileType.NotFound``.
    """
    fs, path = resolve(uri)
    try:
        if not is_s3(uri):
            return sorted(_local_entries(path, recursive), key=lambda i: i.path)
        return sorted(fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True)), key=lambda i: i.path)
    except OSError as exc:
        raise StorageError(f"cannot list {uri}: {first_line(exc)}") from None


def _local_entries(path: str, recursive: bool):
    """A local folder's entries (pyarrow's listing fails whole on one name that is not UTF-8)."""
    if not os.path.isdir(path):
        return
    for entry in os.scandir(path):
        name = printable(entry.path)
        if name != entry.path:
            yield pafs.FileInfo(name, pafs.FileType.Unknown)
            continue
        try:
            stat = entry.stat()
        except OSError:  # a link to nothing
            yield pafs.FileInfo(entry.path, pafs.FileType.NotFound)
            continue
        if entry.is_dir():
            yield pafs.FileInfo(entry.path, pafs.FileType.Directory, mtime_ns=stat.st_mtime_ns)
            if recursive:
                yield from _local_entries(entry.path, recursive)
        else:
            yield pafs.FileInfo(entry.path, pafs.FileType.File, size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def uri_of(uri_root: str, file_info: pafs.FileInfo) -> str:
    """The URI of a FileInfo returned by `list_dir(uri_root)`."""
    return S3 + file_info.path if is_s3(uri_root) else file_info.path


def open_input_file(uri: str):
    """A seekable binary file (pyarrow NativeFile): S3 objects are read with ranged GETs, not copied."""
    fs, path = resolve(uri)
    return fs.open_input_file(path)


def open_input_stream(uri: str, buffer_size: int = 1 << 20):
    """A sequential binary stream read in `buffer_size` pieces (one S3 GET streamed, not a GET per read)."""
    fs, path = resolve(uri)
    return fs.open_input_stream(path, compression=None, buffer_size=buffer_size)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_json(uri: str) -> dict | None:
    """A small JSON file's content, or None when it is missing, unreadable or not JSON."""
    try:
        return json.loads(read_bytes(uri))
    except (OSError, ValueError):  # FileNotFoundError is an OSError
        return None


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object atomically."""
    fs, path = resolve(uri)
    if is_s3(uri):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # the write failed (a full disk): no temp file is left
            os.remove(tmp)


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create an object only if none exists (True), atomically: O_EXCL locally, a conditional put on S3."""
    if is_s3(uri):
        bucket, key = _bucket_key(uri)
        try:
            _s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except Exception as exc:
            if _s3_status(exc) in (409, 412):
                return False
            raise StorageError(f"cannot create {uri}: {first_line(exc)}") from None
        return True
    path = os.path.abspath(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def _s3_status(exc: BaseException) -> int | None:
    """The HTTP status of a failed boto3 request (botocore's ClientError carries it), else None."""
    return getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")


@contextlib.contextmanager
def _local_swap_lock(path: str):
    """Serialise compare-and-swap updates of a local file: an exclusive flock on ``<path>.lock``, a file never
    removed (locking the file itself would not do: a replace or a delete gives the next holder another inode)."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for every file; for writing: NFS emulates flock with fcntl locks
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_versioned(uri: str) -> tuple[bytes, str] | None:
    """A small object's bytes and a tag of this version of it (S3's ETag; locally a digest of the bytes), None
    when it is missing: what ``replace_if`` and ``delete_if`` compare against."""
    if not is_s3(uri):
        try:
            data = read_bytes(uri)
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()
    bucket, key = _bucket_key(uri)
    try:
        answer = _s3_client().get_object(Bucket=bucket, Key=key)
        return answer["Body"].read(), answer["ETag"]
    except Exception as exc:
        if _s3_status(exc) == 404:
            return None
        raise OSError(f"cannot read {uri}: {first_line(exc)}") from None


def replace_if(uri: str, data: bytes, version: str) -> str | None:
    """Overwrite a small object only while it is still at `version` (S3's If-Match; locally under a lock):
    the new version, or None when it changed or is gone. A retried request whose first answer was lost also
    reads as changed; the caller tells that from the content."""
    if is_s3(uri):
        bucket, key = _bucket_key(uri)
        try:
            return _s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfMatch=version)["ETag"]
        except Exception as exc:
            if _s3_status(exc) in (404, 409, 412):
                return None
            raise StorageError(f"cannot write {uri}: {first_line(exc)}") from None
    path = os.path.abspath(uri)
    with _local_swap_lock(path):
        now = read_versioned(path)
        if now is None or now[1] != version:
            return None
        write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def delete_if(uri: str, version: str) -> bool:
    """Delete a small object only while it is still at `version` (S3's conditional delete; locally under a
    lock); False when it changed. Gone already counts as deleted."""
    if is_s3(uri):
        bucket, key = _bucket_key(uri)
        try:
            _s3_client().delete_object(Bucket=bucket, Key=key, IfMatch=version)
        except Exception as exc:
            if _s3_status(exc) == 404:
                return True
            if _s3_status(exc) in (409, 412):
                return False
            raise StorageError(f"cannot delete {uri}: {first_line(exc)}") from None
        return True
    path = os.path.abspath(uri)
    with _local_swap_lock(path):
        now = read_versioned(path)
        if now is not None and now[1] != version:
            return False
        delete(path)
    return True


def upload_file(local_path: str, uri: str) -> None:
    """Move a finished local file to its final place atomically (rename, or a completed S3 upload that
    removes the local file, also when it fails)."""
    if is_s3(uri):
        bucket, key = _bucket_key(uri)
        try:
            _s3_client().upload_file(local_path, bucket, key, Config=_transfer_config())
        finally:
            os.remove(local_path)
        return
    path = os.path.abspath(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.replace(local_path, path)
    except OSError:  # another device: copy next to the target, then rename
        tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, path)
        os.remove(local_path)


def staging_file(uri: str, suffix: str = "") -> str:
    """A local temp path to build an output in: beside it locally (same device), in the temp dir for S3."""
    if is_s3(uri):
        fd, path = tempfile.mkstemp(prefix="pairmine-", suffix=suffix)
    else:
        directory = os.path.dirname(os.path.abspath(uri))
        os.makedirs(directory, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    os.chmod(path, 0o666 & ~_umask())  # mkstemp makes it 0600: outputs get the usual file mode, like every other file
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def delete(uri: str) -> None:
    """Remove one object or file; gone already is fine. On S3 a plain DeleteObject: pyarrow's would leave a
    directory-marker object behind when the prefix empties."""
    if is_s3(uri):
        bucket, key = _bucket_key(uri)
        _s3_client().delete_object(Bucket=bucket, Key=key)
        return
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def delete_tree(uri: str) -> None:
    """Remove a folder (an S3 prefix) and everything under it; gone already is fine."""
    fs, path = resolve(uri)
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass


def _check_endpoint() -> None:
    """Fail at once when a configured S3 endpoint refuses connections: the SDKs retry that with backoff
    (AWS_MAX_ATTEMPTS times, over a minute) before they give up."""
    endpoint = _endpoint()
    if not endpoint:
        return
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint if "//" in endpoint else f"http://{endpoint}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "", port), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise StorageError(f"the S3 endpoint {endpoint} (AWS_ENDPOINT_URL) does not answer: {first_line(exc)}") from None


def check_readable(uri: str) -> pafs.FileInfo:
    """Fail with a one-line message unless `uri` exists (and its bucket answers)."""
    if is_s3(uri):
        bucket = uri[len(S3) :].split("/", 1)[0]
        if not bucket:
            raise StorageError(f"no bucket in {uri}")
        _check_endpoint()
        fs = s3_filesystem()
        try:
            fs.get_file_info(pafs.FileSelector(bucket, allow_not_found=False, recursive=False))
        except OSError as exc:
            raise StorageError(f"bucket {bucket!r} is not reachable{_endpoint_note()}: {first_line(exc)}") from None
    found = info(uri)
    if found.type == pafs.FileType.NotFound:
        raise StorageError(f"input not found: {uri}")
    return found


def check_writable(uri: str, create: bool = True) -> None:
    """Fail with a one-line message unless an output can be written at `uri`; creates the folder unless
    `create` is false (a dry run touches nothing: then the nearest existing folder must be writable)."""
    if is_s3(uri):
        bucket = uri[len(S3) :].split("/", 1)[0]
        _check_endpoint()
        try:
            _s3_client().head_bucket(Bucket=bucket)
        except Exception as exc:  # botocore raises several unrelated types
            raise StorageError(f"output bucket {bucket!r} is not usable{_endpoint_note()}: {first_line(exc)}") from None
        return
    path = os.path.abspath(uri)
    if os.path.exists(path) and not os.path.isdir(path):
        raise StorageError(f"output {uri} exists and is not a directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise StorageError(f"output {uri} is not writable ({existing} is a file, not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK) or os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise StorageError(f"output {uri} is not writable ({existing} is read-only for this user)")
    if not create:
        return
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".tmp-probe-")  # access() can be wrong (ACLs, read-only mounts)
        probe.close()
    except OSError as exc:
        raise StorageError(f"cannot write output {uri}: {exc.strerror or first_line(exc)}") from None


def _endpoint_note() -> str:
    return f" at {_endpoint()}" if _endpoint() else ""


def printable(name: str) -> str:
    """A name as valid text: bytes that were not UTF-8 (held as surrogates by os and tarfile) escaped as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def first_line(exc: BaseException) -> str:
    """An exception's first line for a one-line message (its type when the message is empty)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
