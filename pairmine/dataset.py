"""The output contract: what a pipeline run writes and how a consumer reads it (docs/FORMATS.md).

An output (a local folder or an ``s3://`` prefix) holds ``shards/`` (WebDataset tars), ``manifest/``
(one Parquet row per committed shard, written after the shard: the commit point), ``rejects/`` (one
Parquet row per skipped input or candidate), ``_SUCCESS`` (the last run's summary) and ``runs/`` (every
finished run's summary, one JSON file per run id: the output's history). Writers (the
pipelines' shard sink) and consumers (training, ``pairmine report``/``verify``) both use this module
and nothing else for names, schemas and reading; it imports neither Ray nor torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import re
import tarfile
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from . import storage
from .errors import UserError

SHARDS, MANIFEST, REJECTS, SUCCESS, RUNS = "shards", "manifest", "rejects", "_SUCCESS", "runs"
NOTHING_TO_DO = "nothing_to_do"  # the status of a run that committed nothing (no new input)
TEMP_PREFIX = ".tmp-"  # files being written (storage.write_bytes, staging shards): never part of an output

# The files of one sample per pipeline: required ones, then optional ones a consumer may find.
SAMPLE_FILES: dict[str, tuple[str, ...]] = {
    "syn4removal": ("source.jpg", "target.jpg", "mask.png", "alpha.png", "json"),
    "video4removal": ("source.jpg", "target.jpg", "mask.png", "json"),
}
OPTIONAL_FILES: dict[str, tuple[str, ...]] = {"syn4removal": (), "video4removal": ("effect_mask.png",)}

REJECT_FIELDS = ("input", "stage", "reason", "detail")
REJECT_STRUCT = pa.struct([(name, pa.string()) for name in REJECT_FIELDS])
MANIFEST_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),  # path under the output; null when the shard's groups made no sample
        ("pipeline", pa.string()),
        ("run", pa.string()),
        ("config_hash", pa.string()),
        ("version", pa.string()),
        ("samples", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("keys", pa.list_(pa.string())),
        ("phashes", pa.list_(pa.string())),  # per key: the object's perceptual hash (near-duplicate buckets)
        ("quality", pa.list_(pa.map_(pa.string(), pa.float64()))),  # per key: the sample json's quality signals
        ("inputs", pa.list_(pa.struct([("unit", pa.string()), ("ids", pa.list_(pa.string()))]))),
        ("unit_totals", pa.list_(pa.struct([("unit", pa.string()), ("total", pa.int64())]))),
        # per unit in `inputs`: where it was read from and its size in bytes (null: a folder or split), so that a
        # later run knows an input by its location, not its name (null in rows of older versions)
        ("unit_sources", pa.list_(pa.struct([("unit", pa.string()), ("uri", pa.string()), ("size", pa.int64())]))),
        ("rejects", pa.int64()),
        ("created", pa.timestamp("s", tz="UTC")),
    ]
)
REJECTS_SCHEMA = pa.schema([(k, pa.string()) for k in ("pipeline", "run", "shard", *REJECT_FIELDS)])


@dataclass(frozen=True, slots=True)
class Reject:
    """The one verdict shape of a skipped input or candidate, from the operator that judged it to a row
    of ``rejects/``. A check that does not know what it judged returns ``Reject.because(reason, detail)``;
    its caller places it with ``.at(input, stage)``."""

    input: str  # what was skipped: "<unit>/<record>", "<unit>/<record>#<segment>", "<video>#<first>-<stop>", ...
    stage: str  # where: read, decode, annotation, entity, background, compose, screen, mog, pair, mask, ...
    reason: str  # short stable code, e.g. "truncated_image"
    detail: str = ""  # human-readable specifics (values, limits)

    @classmethod
    def because(cls, reason: str, detail: str = "") -> "Reject":
        return cls("", "", reason, detail)

    @classmethod
    def unexpected(cls, exc: BaseException) -> "Reject":
        """An error no check foresaw (data that broke an operator), as a reject: its type and first line."""
        first = str(exc).splitlines()[0] if str(exc) else ""
        return cls.because("unexpected_error", f"{type(exc).__name__}: {first}"[:300])

    def at(self, input: str, stage: str) -> "Reject":
        return dataclasses.replace(self, input=input, stage=stage)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in REJECT_FIELDS}


def sample_key(record: str, config_hash: str, index: int) -> str:
    """Deterministic WebDataset key: the record's name, a digest of (config, full record id), the index.

    The same config and inputs give the same keys; no dots, so WebDataset splits extensions correctly.
    """
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", record.rsplit("/", 1)[-1])[-48:]
    digest = hashlib.blake2b(f"{config_hash}/{record}".encode(), digest_size=5).hexdigest()
    return f"{stem}-{digest}-{index:02d}"


def _finite(value):
    """`value` with every non-finite float replaced by None, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def sample_json(meta: dict) -> bytes:
    """A sample's ``json`` file: strict JSON (a non-finite number becomes null, never NaN or Infinity), sorted keys."""
    return json.dumps(_finite(meta), sort_keys=True, allow_nan=False).encode()


def is_temp(name: str) -> bool:
    return storage.basename(name).startswith(TEMP_PREFIX)


def _parquet_entries(output: str, folder: str) -> dict[str, tuple[str, str]]:
    """name -> (URI, version) of the committed Parquet files of a folder; the version (size, mtime) tells a
    rewritten file from the one an index cached."""
    return {
        storage.basename(e.path): (storage.uri_of(output, e), f"{e.size}:{e.mtime_ns}")
        for e in storage.list_dir(storage.join(output, folder))
        if e.path.endswith(".parquet") and not is_temp(e.path)
    }


def parquet_files(output: str, folder: str) -> list[str]:
    """Committed Parquet files of a folder of the output (temp files of a write in progress left out)."""
    return [uri for uri, _ in _parquet_entries(output, folder).values()]


def to_parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


READ_THREADS = 32  # one small file per shard: on S3 each is a request, so they are read side by side
INDEX = "_index"  # <output>/_index/<folder>.parquet: a cache of a folder's rows (see write_index)
FILE = "file"  # the index's extra column: "<name>@<version>" of the file each row comes from


def _index_uri(output: str, folder: str) -> str:
    return storage.join(output, INDEX, f"{folder}.parquet")


def _read_index(output: str, folder: str, schema: pa.Schema, columns: list[str] | None) -> pa.Table | None:
    """The folder's cached rows with their file names, or None when there is no usable index."""
    try:
        names = schema.names if columns is None else columns
        table = pq.read_table(io.BytesIO(storage.read_bytes(_index_uri(output, folder))), columns=[*names, FILE], use_threads=False)
        return table.cast(pa.schema([*(schema.field(c) for c in names), pa.field(FILE, pa.string())]))
    except Exception:  # missing, or unreadable: the folder's own files are the truth, the index only a cache
        return None


class DamagedOutput(UserError):
    """An output's own bookkeeping (a manifest or rejects file) cannot be read; exit code 1."""

    exit_code = 1


def _read_rows(output: str, folder: str, schema: pa.Schema, columns: list[str] | None, use_index: bool = True) -> pa.Table:
    """Every committed Parquet file of a folder as one table, with each row's file name: rows of files the
    index covers come from the index (one read), the others from their files (side by side)."""
    from concurrent.futures import ThreadPoolExecutor

    files = {f"{name}@{version}": uri for name, (uri, version) in _parquet_entries(output, folder).items()}
    tables = []
    cached = _read_index(output, folder, schema, columns) if files and use_index else None
    if cached is not None:
        cached = cached.filter(pa.compute.is_in(cached[FILE], value_set=pa.array(list(files), pa.string())))
        tables.append(cached)
        for name in set(cached[FILE].to_pylist()):
            del files[name]

    def read(item: tuple[str, str]) -> pa.Table | str:
        """The file's rows, or why it cannot be read, raised by the caller in the main thread (raised here, in a
        pool thread, the process aborted at exit in 1 of 12 runs; 0 of 20 so)."""
        try:
            table = pq.read_table(io.BytesIO(storage.read_bytes(item[1])), schema=schema, columns=columns, use_threads=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            return f"{item[1]} is not a readable {folder} file ({storage.first_line(exc)})"
        return table.append_column(FILE, pa.array([item[0]] * table.num_rows, pa.string()))

    with ThreadPoolExecutor(READ_THREADS) as pool:
        tables += pool.map(read, sorted(files.items()))
    unreadable = [t for t in tables if isinstance(t, str)]
    if unreadable:
        raise DamagedOutput(f"{unreadable[0]}: the output is damaged; restore the file, or move the output aside and rerun into a new one")
    if not tables:
        empty = schema.empty_table()
        empty = empty.select(columns) if columns else empty
        return empty.append_column(FILE, pa.array([], pa.string()))
    return pa.concat_tables(tables)


def _read_folder(output: str, folder: str, schema: pa.Schema, columns: list[str] | None = None, use_index: bool = True) -> pa.Table:
    """Every committed Parquet file of a folder as one table (``columns`` only, when given)."""
    return _read_rows(output, folder, schema, columns, use_index).drop_columns([FILE])


def write_index(output: str) -> None:
    """Cache the rows of ``manifest/`` and ``rejects/`` in ``_index/`` (one file each), so that a reader of an
    output with many shards reads one file plus the files written since, not one file per shard. The per-shard
    files stay the truth: index rows of files no longer listed are ignored, a missing or bad index is skipped.
    Called by the run holding the output's lease, when it ends."""
    for folder, schema in ((MANIFEST, MANIFEST_SCHEMA), (REJECTS, REJECTS_SCHEMA)):
        cached = _read_index(output, folder, schema, None)  # every column: an index of an older schema is rewritten
        table = _read_rows(output, folder, schema, None)
        if cached is None or set(cached[FILE].to_pylist()) != set(table[FILE].to_pylist()):
            storage.write_bytes(_index_uri(output, folder), to_parquet(table))


def is_output(output: str) -> bool:
    """Whether a folder or prefix holds a pipeline output (a run started writing there)."""
    return any(storage.exists(storage.join(output, name)) for name in (SHARDS, MANIFEST, REJECTS, SUCCESS))


def read_manifest(output: str, columns: list[str] | None = None, use_index: bool = True) -> pa.Table:
    """Every manifest row of an output (``MANIFEST_SCHEMA``); empty when nothing was committed.
    `use_index=False` reads every file itself (``pairmine verify``: the files are the truth)."""
    return _read_folder(output, MANIFEST, MANIFEST_SCHEMA, columns, use_index)


def unit_sources(manifest: list[dict]) -> dict[str, tuple[str | None, int | None]]:
    """Where each committed unit was read from, by name: (uri, file size, None for a folder or split); (None, None)
    for a unit only rows of an older version account for (they recorded no URI)."""
    sources = {entry["unit"]: (None, None) for row in manifest for entry in row["inputs"]}
    sources.update({s["unit"]: (s["uri"], s["size"]) for row in manifest for s in row.get("unit_sources") or ()})
    return sources


def read_rejects(output: str, columns: list[str] | None = None, use_index: bool = True) -> pa.Table:
    """Every reject row of an output (``REJECTS_SCHEMA``)."""
    return _read_folder(output, REJECTS, REJECTS_SCHEMA, columns, use_index)


def read_success(output: str) -> dict | None:
    """The summary of the last completed run, or None while a run is in progress, none completed, or the file
    is not a summary (overwritten by hand)."""
    return _summary(storage.join(output, SUCCESS))


def read_runs(output: str) -> list[dict]:
    """The summaries of every finished run on the output (``runs/<run>.json``), oldest first (one that is not
    JSON is left out)."""
    entries = sorted((e for e in storage.list_dir(storage.join(output, RUNS)) if e.path.endswith(".json") and not is_temp(e.path)),
                     key=lambda e: e.path)
    found = (_summary(storage.uri_of(output, e)) for e in entries)  # run ids sort by start time
    return [summary for summary in found if summary is not None]


def _summary(uri: str) -> dict | None:
    try:
        summary = json.loads(storage.read_bytes(uri))
    except (OSError, ValueError):  # missing, unreadable, or not JSON
        return None
    return summary if isinstance(summary, dict) else None


LAYOUT = (SHARDS, MANIFEST, REJECTS, SUCCESS, RUNS, INDEX, "logs", "_LEASE")  # an output's own names: what its runs write


def in_layout(output: str, uri: str) -> bool:
    """Whether `uri` is one of `output`'s own files or inside its folders: a file written there damages it."""
    root, target = storage.normalize(output).rstrip("/") + "/", storage.normalize(uri)
    return target.startswith(root) and target[len(root) :].split("/")[0] in LAYOUT


@dataclass(frozen=True)
class Shard:
    """One committed shard, as its manifest row describes it."""

    uri: str  # the tar, local path or s3:// URI
    pipeline: str
    config_hash: str
    samples: int
    bytes: int
    sha256: str
    keys: tuple[str, ...]

    @property
    def name(self) -> str:
        return storage.basename(self.uri)


def committed_shards(output: str, manifest: pa.Table | None = None) -> list[Shard]:
    """The shards an output's manifest lists, in name order: the only ones a consumer may read (a
    manifest read without its ``keys`` column gives shards without keys)."""
    manifest = read_manifest(output) if manifest is None else manifest
    columns = [c for c in ("shard", "pipeline", "config_hash", "samples", "bytes", "sha256", "keys") if c in manifest.column_names]
    shards = [
        Shard(storage.join(output, row["shard"]), row["pipeline"], row["config_hash"], row["samples"], row["bytes"],
              row["sha256"], tuple(row.get("keys") or ()))
        for row in manifest.select(columns).to_pylist()
        if row["shard"]
    ]
    return sorted(shards, key=lambda s: s.uri)


class ShardError(ValueError):
    """A shard that does not match its manifest row; the message is one line."""


def iter_shard(shard: Shard, verify: bool = True) -> Iterator[dict]:
    """The samples of one shard as ``{"__key__": key, "<file>": bytes, ...}``.

    With ``verify``, a shard whose size or sha256 differs from its manifest row raises ``ShardError`` before
    any sample: a damaged shard is never half used (training would learn from its bad bytes). An S3 shard is
    copied to the temp dir while it is hashed, a local one hashed in place, then read.
    """
    if not verify:
        with storage.open_input_stream(shard.uri) as raw:
            yield from _readable_tar(shard.uri, raw)
        return
    found = storage.info(shard.uri)
    if found.size != shard.bytes:
        actual = "missing" if found.size is None else f"{found.size} bytes"
        raise ShardError(f"{shard.uri}: {actual}, the manifest says {shard.bytes} bytes")
    with _verified_copy(shard) as local:
        yield from _readable_tar(shard.uri, local)


@contextlib.contextmanager
def _verified_copy(shard: Shard) -> Iterator[BinaryIO]:
    """The shard's bytes, checked against the manifest's sha256, as a file read from its start: a local shard
    itself (hashed through the handle it is then read by), or an S3 shard's copy in an unnamed temp file
    (gone with its handle: a killed process leaves no copy behind)."""
    with contextlib.ExitStack() as stack:
        if storage.is_s3(shard.uri):
            source = stack.enter_context(storage.open_input_stream(shard.uri))
            copy = stack.enter_context(tempfile.TemporaryFile(prefix="pairmine-shard-"))
        else:
            source = copy = stack.enter_context(open(shard.uri, "rb"))
        digest = hashlib.sha256()
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
            if copy is not source:
                copy.write(block)
        if copy is not source:
            source.close()  # the S3 connection is not held while the copy is read
        _check_sha256(shard, digest)
        copy.seek(0)
        yield copy


def _check_sha256(shard: Shard, digest) -> None:
    if digest.hexdigest() != shard.sha256:
        raise ShardError(f"{shard.uri}: sha256 {digest.hexdigest()[:12]}… differs from the manifest's {shard.sha256[:12]}…")


def _readable_tar(uri: str, stream) -> Iterator[dict]:
    try:
        yield from _tar_samples(stream)
    except (tarfile.TarError, EOFError) as exc:
        raise ShardError(f"{uri}: not a readable tar: {storage.first_line(exc)}") from None


def _tar_samples(stream) -> Iterator[dict]:
    """Group a tar's members into samples by key (WebDataset: the name up to the first dot)."""
    sample: dict | None = None
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if sample is not None and sample["__key__"] != key:
                yield sample
                sample = None
            sample = sample or {"__key__": key}
            sample[ext] = tar.extractfile(member).read()
    if sample is not None:
        yield sample


@dataclass(frozen=True)
class Member:
    """Where one file of a sample lies in its shard: read it with ``read_member`` (one ranged read)."""

    key: str
    name: str  # the file name after the key: "json", "source.jpg", ...
    offset: int
    size: int


def shard_members(uri: str, max_samples: int) -> list[Member]:
    """The files of a shard's first `max_samples` samples, found by reading tar headers and seeking past
    the data: a few small reads per sample (ranged GETs on S3), not the shard."""
    members: list[Member] = []
    keys: set[str] = set()
    long_name = None
    with storage.open_input_file(uri) as f:
        offset = 0
        while True:
            header = f.read_at(tarfile.BLOCKSIZE, offset)
            if len(header) < tarfile.BLOCKSIZE or header.count(0) == tarfile.BLOCKSIZE:
                break
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            data_at = offset + tarfile.BLOCKSIZE
            offset = data_at + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            if info.type == tarfile.GNUTYPE_LONGNAME:  # the next member's name, too long for its header
                long_name = f.read_at(info.size, data_at).rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            name, long_name = long_name or info.name, None
            if not info.isfile():
                continue
            key, _, ext = name.partition(".")
            if key not in keys and len(keys) == max_samples:
                break
            keys.add(key)
            members.append(Member(key, ext, data_at, info.size))
    return members


def read_member(uri: str, member: Member) -> bytes:
    with storage.open_input_file(uri) as f:
        return f.read_at(member.size, member.offset)


def iter_samples(output: str, shards: Iterable[Shard] | None = None, verify: bool = True) -> Iterator[dict]:
    """Every sample of an output's committed shards (or of the given ones), each shard verified."""
    for shard in committed_shards(output) if shards is None else shards:
        yield from iter_shard(shard, verify)


def missing_files(sample: dict, pipeline: str) -> list[str]:
    """The required files of `pipeline` that a sample lacks."""
    return [name for name in SAMPLE_FILES[pipeline] if name not in sample]
