"""Ray Data sources of image records: SA-1B tars streamed member by member, and planned groups.

Both emit the same rows (``READER_SCHEMA``): one row per group of records with their raw bytes,
the rejects met while reading, the input ids the row accounts for and, on a unit's last row, the
unit's id count. A tar is read once, front to back, pairing ``<stem>.jpg`` with ``<stem>.json``;
members that escape the extraction directory, orphans and a truncated tail become rejects.
"""

from __future__ import annotations

import functools
import posixpath
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Iterator

import numpy as np
import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, FileBasedDatasource, ReadTask

from ..dataset import Reject
from .. import storage
from .inputs import VANISHED, unit_groups, vanished_detail

_RECORD = pa.struct(
    [
        ("id", pa.string()),
        ("image", pa.large_binary()),
        ("annotation", pa.large_binary()),
        ("segmentation", pa.large_binary()),
        ("masks", pa.list_(pa.large_binary())),  # Open Images: one PNG per annotation row, null where not found
    ]
)
_REJECT = pa.struct([("input", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string())])
READER_SCHEMA = pa.schema(
    [
        ("unit", pa.string()),
        ("kind", pa.string()),
        ("categories", pa.string()),
        ("records", pa.list_(_RECORD)),
        ("rejects", pa.list_(_REJECT)),
        ("consumed", pa.list_(pa.string())),
        ("unit_total", pa.int64()),
    ]
)
_TAR_EXTENSIONS = {"jpg": "image", "jpeg": "image", "json": "annotation"}


def _table(row: dict) -> pa.Table:
    return pa.Table.from_pylist([row], schema=READER_SCHEMA)


def tar_items(stream: BinaryIO, unit: str, max_file_bytes: int) -> Iterator[tuple[str | None, object]]:
    """(id, record-or-Reject) items of an SA-1B tar, read once as a stream, paired by stem.

    A member name that is not valid UTF-8 is used with its undecodable bytes escaped (``\\xff``): ids
    and rejects stay text, the same in every run.
    """
    pending: dict[str, dict] = {}
    seen: set[str] = set()
    unsafe: set[str] = set()  # records rejected for an unsafe member: their other members are part of that reject
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:  # a gzip / bz2 / xz compressed tar too
            for member in tar:
                if member.isdir():
                    continue
                name = storage.printable(member.name)
                stem, _, ext = name.removeprefix("./").rpartition(".")  # `tar -C dir .` writes ./x.jpg
                field = _TAR_EXTENSIONS.get(ext.lower())
                if storage.escapes(name) or not member.isfile():
                    why = Reject(f"{unit}/{name}", "read", "unsafe_member", "member is a link or escapes the extraction directory")
                    if stem not in seen:
                        seen.add(stem)
                        unsafe.add(stem)
                        pending.pop(stem, None)  # its other member came first: the record is this reject
                        yield stem, why
                    elif stem not in unsafe:  # after its record was complete: an extra member, said on its own
                        yield None, why
                    continue
                if field is None:
                    yield None, Reject(f"{unit}/{name}", "read", "unexpected_member", "not an SA-1B .jpg or .json")
                    continue
                if member.size > max_file_bytes:
                    yield None, Reject(f"{unit}/{name}", "read", "file_too_large", f"{member.size} bytes > max_file_bytes={max_file_bytes}")
                    continue
                if stem in seen or field in pending.get(stem, {}):
                    yield None, Reject(f"{unit}/{name}", "read", "duplicate_member", "a member of that name came earlier")
                    continue
                record = pending.setdefault(stem, {"id": stem})
                record[field] = tar.extractfile(member).read()
                if "image" in record and "annotation" in record:
                    seen.add(stem)
                    yield stem, pending.pop(stem)
    except (tarfile.TarError, EOFError, OSError) as exc:
        yield None, Reject(unit, "read", "truncated_tar", f"tar ends early or is corrupt after {len(seen) + len(pending)} records: {exc}")
    for stem, record in pending.items():
        missing = "missing_image" if "image" not in record else "missing_annotations"
        yield stem, Reject(f"{unit}/{stem}", "read", missing, f"{stem} has no {'.jpg' if missing == 'missing_image' else '.json'} in the tar")


def vanished_row(unit: str, kind: str, uri: str) -> dict:
    """The reader row of a unit whose file was gone when it was read (moved or deleted after the run listed
    it): a reject that consumes no id, so the unit is not done and a rerun reads it if it is back."""
    why = Reject(unit, "read", VANISHED, vanished_detail(uri))
    return {"unit": unit, "kind": kind, "categories": "", "records": [], "rejects": [why.to_dict()], "consumed": [], "unit_total": -1}


class _Vanished:
    """What `_open_input_source` gives for a file that is gone: `_read_stream` turns it into `vanished_row`."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class SA1BTarDatasource(FileBasedDatasource):
    """SA-1B tars, local or S3, each read once as a stream into group rows. A tar gone since the run listed
    it is that unit's `input_vanished` reject, whether it went before the read tasks were planned (Ray then
    leaves it out: see `vanished`) or before its task opened it."""

    def __init__(self, paths: list[str], *, filesystem, units: dict[str, str], skip: dict[str, set[str]], group_size: int, max_file_bytes: int):
        super().__init__(paths, filesystem=filesystem, schema=READER_SCHEMA, ignore_missing_paths=True)
        self._units, self._skip, self._group_size, self._max_file_bytes = units, skip, group_size, max_file_bytes
        self.vanished = sorted(set(paths) - set(self._paths()))

    def _open_input_source(self, filesystem, path: str, **open_args):
        try:
            return super()._open_input_source(filesystem, path, **open_args)
        except FileNotFoundError:
            return _Vanished()

    def _read_stream(self, f, path: str) -> Iterator[pa.Table]:
        unit = self._units[path]
        if isinstance(f, _Vanished):
            yield _table(vanished_row(unit, "sa1b", path))
            return
        items = tar_items(f, unit, self._max_file_bytes)
        for row in unit_groups(unit, "sa1b", "", items, self._group_size, self._skip.get(unit, set()), immutable=True):
            yield _table(row)


def _load(value, max_file_bytes: int, missing_ok: bool = False) -> bytes | None:
    """Member bytes: inline bytes as they are, a URI read from storage; a missing file is an error, or None
    with `missing_ok`."""
    if value is None or isinstance(value, bytes):
        return value
    size = storage.info(value).size
    if size is None and missing_ok:
        return None
    if size is None or size > max_file_bytes:
        raise ValueError(f"{value}: {'missing' if size is None else f'{size} bytes > max_file_bytes={max_file_bytes}'}")
    return storage.read_bytes(value)


@functools.lru_cache(maxsize=4)
def _archive(uri: str) -> tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]:
    """An open zip archive (its central directory read once per worker; members then read by range) and its
    members by file name: a mask is found whether the archive holds it at its top or in a folder (re-zipped)."""
    archive = zipfile.ZipFile(storage.open_input_file(uri))
    return archive, {posixpath.basename(info.filename): info for info in archive.infolist() if not info.is_dir()}


def _load_mask(locator: str | None, max_file_bytes: int) -> bytes | None:
    """A mask's bytes from a loose file or ``zip://<member>::<archive uri>``; None when it is not there."""
    if locator is None:
        return None
    if not locator.startswith("zip://"):
        return _load(locator, max_file_bytes, missing_ok=True)
    member, _, uri = locator.removeprefix("zip://").partition("::")
    archive, members = _archive(uri)
    found = members.get(posixpath.basename(member))
    if found is None:
        return None
    if found.file_size > max_file_bytes:
        raise ValueError(f"{locator}: {found.file_size} bytes > max_file_bytes={max_file_bytes}")
    return archive.read(found)


def load_planned_row(row: dict, max_file_bytes: int) -> dict:
    """Read the files a planned row names; unreadable records become rejects of that row (a missing
    Open Images mask is left null: it rejects only its own annotation)."""
    records, rejects = [], list(row["rejects"])

    def load(member: dict):
        try:
            files = {k: _load(member.get(k), max_file_bytes) for k in ("image", "annotation", "segmentation")}
            masks = [_load_mask(m, max_file_bytes) for m in member["masks"]] if "masks" in member else None
            return files | {"id": member["id"], "masks": masks}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            return Reject(f"{row['unit']}/{member['id']}", "read", "unreadable_file", storage.first_line(exc))

    with ThreadPoolExecutor(8) as pool:  # object stores reward concurrent GETs
        for loaded in pool.map(load, row["records"]):
            (rejects.append(loaded.to_dict()) if isinstance(loaded, Reject) else records.append(loaded))
    return row | {"records": records, "rejects": rejects}


class PlannedGroupsDatasource(Datasource):
    """Rows planned on the driver (loose SA-1B folders, panoptic and Open Images splits) whose files are read in tasks."""

    def __init__(self, rows: list[dict], max_file_bytes: int):
        self._rows, self._max_file_bytes = rows, max_file_bytes

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        chunks = [c.tolist() for c in np.array_split(np.array(self._rows, dtype=object), min(parallelism, len(self._rows))) if len(c)]
        max_bytes = self._max_file_bytes
        return [
            ReadTask(
                lambda chunk=chunk: (_table(load_planned_row(r, max_bytes)) for r in chunk),
                BlockMetadata(num_rows=len(chunk), size_bytes=None, exec_stats=None, input_files=None),
                schema=READER_SCHEMA,
                per_task_row_limit=per_task_row_limit,
            )
            for chunk in chunks
        ]
