"""The one writer of every pipeline: WebDataset shards, ``manifest/``, ``rejects/`` and progress.

Pipelines hand the writer one row per group (``pack_group``): the group's samples already
serialised as tar members (one buffer per sample), each sample's quality signals and perceptual
hash, its rejects, the input ids it accounts for and its stats. A group is never split across
shards, so a shard commits whole groups. With a near-duplicate cap (``dedup.max_per_bucket``) a
run-wide counter (``dedup.BucketCounter``) admits each sample by its hash; the excess becomes
``near_duplicate`` rejects. Each shard commits in three atomic
steps, the manifest row last: ``shards/<name>.tar`` (temp + rename, or a completed S3 upload),
``rejects/<name>.parquet``, ``manifest/<name>.parquet``. A shard without a manifest row is an orphan
of a killed run and is removed by the next run, which also skips every input id already listed in
the manifest: reruns are incremental and never duplicate a sample. Names derive from the run id,
the write task and a part number, so a retried write task overwrites its own files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Datasink
from ray.data.block import BlockAccessor

from .. import storage
from ..dataset import MANIFEST, MANIFEST_SCHEMA, REJECT_FIELDS, REJECT_STRUCT, REJECTS, REJECTS_SCHEMA, RUNS, SHARDS, SUCCESS
from ..dataset import Reject, is_temp, read_manifest, to_parquet, unit_sources, write_index
from ..errors import UserError
from ..operators.stats import Stats
from .config import ShardParams
from .progress import Reporter

_END_OF_ARCHIVE = b"\0" * 1024


def _tar_member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    return header + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def pack_sample(sample: dict) -> bytes:
    """Serialise a WebDataset sample ({"__key__": k, "<ext>": bytes, ...}) as tar members."""
    return b"".join(_tar_member(f"{sample['__key__']}.{ext}", data) for ext, data in sample.items() if ext != "__key__")


def pack_group(unit: str, consumed: list[str], unit_total: int, samples: list[dict], rejects: list[Reject], stats: Stats) -> dict:
    """The writer's input row for one group."""
    metas = [json.loads(s["json"]) if "json" in s else {} for s in samples]
    return {
        "unit": unit,
        "consumed": consumed,
        "unit_total": unit_total,
        "samples": [pack_sample(s) for s in samples],
        "keys": [s["__key__"] for s in samples],
        "phashes": [m.get("phash") for m in metas],
        "quality": [json.dumps(m.get("quality", {})) for m in metas],
        "rejects": [r.to_dict() for r in rejects],
        "stats": json.dumps(stats.to_dict()),
    }


def signal_values(quality: list[dict[str, float]]) -> dict[str, "np.ndarray"]:
    """Each quality signal's values over samples (float32: a run's summary holds every sample's)."""
    names = sorted({name for q in quality for name in q})
    return {name: np.array([q[name] for q in quality if name in q], np.float32) for name in names}


@dataclass
class _OpenShard:
    """A shard being written to a local staging file, and what it accounts for."""

    path: str
    file: io.BufferedWriter
    digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    bytes: int = 0
    keys: list[str] = field(default_factory=list)
    phashes: list[str | None] = field(default_factory=list)
    quality: list[dict[str, float]] = field(default_factory=list)
    inputs: dict[str, list[str]] = field(default_factory=dict)
    unit_totals: dict[str, int] = field(default_factory=dict)
    rejects: list[pa.StructArray] = field(default_factory=list)

    def _write(self, data) -> None:
        self.file.write(data)
        self.digest.update(data)
        self.bytes += len(data)

    def add(self, rows: pa.Table, i: int, admitted: list[bool] | None = None) -> None:
        """Row `i` of a block of writer rows, its samples where `admitted` (all by default); the sample bytes
        and rejects stay Arrow buffers (no copies)."""
        unit, total = rows["unit"][i].as_py(), rows["unit_total"][i].as_py()
        samples, keys = rows["samples"][i].values, rows["keys"][i].as_py()
        phashes, quality = rows["phashes"][i].as_py(), rows["quality"][i].as_py()
        for j, key in enumerate(keys):
            if admitted is None or admitted[j]:
                self._write(samples[j].as_buffer())
                self.keys.append(key)
                self.phashes.append(phashes[j])
                self.quality.append(json.loads(quality[j]))
        self.inputs.setdefault(unit, []).extend(rows["consumed"][i].as_py())
        if total >= 0:
            self.unit_totals[unit] = total
        self.rejects.append(rows["rejects"][i].values)
        if admitted is not None and not all(admitted):
            self.rejects.append(pa.array([
                Reject(key, "dedup", "near_duplicate", f"perceptual hash {phashes[j]}: its bucket is full (dedup.max_per_bucket)").to_dict()
                for j, key in enumerate(keys) if not admitted[j]], REJECT_STRUCT))

    def close(self) -> None:
        self._write(_END_OF_ARCHIVE)
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        if os.path.exists(self.path):
            os.remove(self.path)

    def rejects_table(self, **constants: str | None) -> pa.Table:
        """The shard's rejects as a ``REJECTS_SCHEMA`` table, `constants` filling the other columns."""
        present = [r for r in self.rejects if len(r)]  # an empty list arrives untyped (Ray infers each block)
        found = pa.concat_arrays(present) if present else pa.array([], REJECT_STRUCT)
        columns = {name: found.field(name) for name in REJECT_FIELDS}
        columns |= {name: pa.repeat(pa.scalar(value, pa.string()), len(found)) for name, value in constants.items()}
        return pa.table({name: columns[name] for name in REJECTS_SCHEMA.names}, schema=REJECTS_SCHEMA)


class ShardSink(Datasink):
    """Ray Data sink writing group rows into WebDataset shards with manifest and rejects."""

    def __init__(self, output: str, pipeline: str, run: str, config_hash: str, version: str, shards: ShardParams, rows_per_shard: int,
                 board=None, buckets=None, sources: dict[str, tuple[str, int | None]] | None = None, lease: str | None = None):
        self.output, self.pipeline, self.run = output, pipeline, run
        self.lease = lease  # the run's lease token, confirmed before each commit (lease.confirm); None: unchecked
        self.sources = sources or {}  # unit name -> (uri, file size or None), recorded with every unit a shard accounts for
        self.config_hash, self.version, self.limits = config_hash, version, shards
        self._rows_per_shard = max(1, rows_per_shard)
        self.board = board  # a progress.Board for the live display, or None
        self.buckets = buckets  # a dedup.BucketCounter actor, or None (no near-duplicate cap)
        self.results: list[dict] = []

    @property
    def min_rows_per_write(self) -> int:
        return self._rows_per_shard

    def write(self, blocks: Iterable, ctx) -> dict:
        part, shard, committed, stats = 0, None, [], Stats()
        progress = Reporter(self.board)
        try:
            for block in blocks:
                rows = BlockAccessor.for_block(block).to_arrow().combine_chunks()
                for i in range(rows.num_rows):
                    stats.merge(json.loads(rows["stats"][i].as_py()))
                    if shard is None:
                        shard = self._open(ctx.task_idx, part)
                    shard.add(rows, i, self._admit(rows["phashes"][i].as_py()))
                    progress.add(rows["unit"][i].as_py(), len(rows["consumed"][i]), rows["unit_total"][i].as_py(),
                                 pairs=len(rows["keys"][i]), rejects=len(rows["rejects"][i]))
                    if len(shard.keys) >= self.limits.max_samples or shard.bytes >= self.limits.max_bytes:
                        committed.append(self._commit(shard, ctx.task_idx, part))
                        progress.add(shards=int(committed[-1]["shard"] is not None), written=committed[-1]["samples"])
                        part, shard = part + 1, None
            if shard is not None:
                committed.append(self._commit(shard, ctx.task_idx, part))
                progress.add(shards=int(committed[-1]["shard"] is not None), written=committed[-1]["samples"])
                shard = None
        finally:  # a failed task leaves no staging file behind (up to max_bytes each, in the temp dir for S3)
            progress.flush()
            if shard is not None:
                shard.discard()
        return {"shards": committed, "stats": stats.to_dict()}

    def _admit(self, phashes: list[str | None]) -> list[bool] | None:
        if self.buckets is None or not phashes:
            return None
        import ray

        return ray.get(self.buckets.admit.remote(phashes))

    def on_write_complete(self, write_result) -> None:
        self.results = [r for r in write_result.write_returns if r]

    def _name(self, task: int, part: int) -> str:
        return f"{self.pipeline}-{self.run}-{task:06d}-{part:03d}"

    def _open(self, task: int, part: int) -> _OpenShard:
        path = storage.staging_file(storage.join(self.output, SHARDS, self._name(task, part) + ".tar"), ".tar")
        return _OpenShard(path, open(path, "wb"))

    def _confirm(self, written: list[str] = ()) -> None:
        """Stop before a commit when this run no longer holds the output (removing the files it just wrote)."""
        from .lease import LeaseLost, confirm

        if self.lease is None:
            return
        try:
            confirm(self.output, self.lease)
        except LeaseLost:
            for uri in written:
                with contextlib.suppress(Exception):  # LeaseLost is what the user must see, not a failed clean-up
                    storage.delete(uri)
            raise

    def _commit(self, shard: _OpenShard, task: int, part: int) -> dict:
        name = self._name(task, part)
        shard.close()
        shard_rel, written = None, []
        try:
            self._confirm()
            if shard.keys:
                shard_rel = f"{SHARDS}/{name}.tar"
                storage.upload_file(shard.path, storage.join(self.output, shard_rel))
                written.append(storage.join(self.output, shard_rel))
        finally:
            if os.path.exists(shard.path):  # moved into place (local), or uploaded, failed or empty (S3)
                os.remove(shard.path)
        rejects = shard.rejects_table(pipeline=self.pipeline, run=self.run, shard=shard_rel)
        if rejects.num_rows:
            storage.write_bytes(storage.join(self.output, REJECTS, f"{name}.parquet"), to_parquet(rejects))
            written.append(storage.join(self.output, REJECTS, f"{name}.parquet"))
        row = {
            "shard": shard_rel,
            "pipeline": self.pipeline,
            "run": self.run,
            "config_hash": self.config_hash,
            "version": self.version,
            "samples": len(shard.keys),
            "bytes": shard.bytes if shard.keys else 0,
            "sha256": shard.digest.copy().hexdigest() if shard.keys else None,
            "keys": shard.keys,
            "phashes": shard.phashes,
            "quality": [list(q.items()) for q in shard.quality],
            "inputs": [{"unit": u, "ids": ids} for u, ids in shard.inputs.items()],
            "unit_totals": [{"unit": u, "total": t} for u, t in shard.unit_totals.items()],
            "unit_sources": [{"unit": u, "uri": self.sources[u][0], "size": self.sources[u][1]} for u in shard.inputs if u in self.sources],
            "rejects": rejects.num_rows,
            "created": int(time.time()),
        }
        self._confirm(written)  # the manifest row is the commit: only under the lease
        storage.write_bytes(storage.join(self.output, MANIFEST, f"{name}.parquet"), to_parquet(pa.Table.from_pylist([row], schema=MANIFEST_SCHEMA)))
        reasons = pc.value_counts(pc.binary_join_element_wise(rejects["stage"], rejects["reason"], "/")).to_pylist()
        return {k: row[k] for k in ("shard", "samples", "bytes", "rejects")} | {
            "reject_reasons": {r["values"]: r["counts"] for r in reasons},
            "quality": signal_values(shard.quality),
            "units": len(shard.inputs),
        }


@dataclass
class Progress:
    """What earlier runs committed to an output: complete units, ids done in the others."""

    complete_units: set[str] = field(default_factory=set)
    consumed: dict[str, set[str]] = field(default_factory=dict)
    sources: dict[str, tuple[str | None, int | None]] = field(default_factory=dict)  # unit -> (uri, file size); uri None: older rows
    shards: int = 0
    samples: int = 0


class OutputConflict(UserError, RuntimeError):
    """The output holds work of another pipeline or config; the message is one line."""


def _changed_since(output: str, config_hash: str, config) -> str:
    """"; changed: KEYS" -- the hashed keys of `config` that differ from the config of the output's latest run
    made with `config_hash` (its summary in ``runs/``), or "" when none is found."""
    from .config import changes_note

    runs = sorted((e for e in storage.list_dir(storage.join(output, RUNS)) if e.path.endswith(".json")), key=lambda e: e.path, reverse=True)
    for entry in runs:
        saved = storage.read_json(storage.uri_of(storage.join(output, RUNS), entry)) or {}
        if saved.get("config_hash") == config_hash:
            return changes_note(saved.get("config") or {}, config)
    return ""


def read_progress(output: str, pipeline: str, config_hash: str, config=None) -> Progress:
    """Progress of earlier runs; refuses an output written by another pipeline or config (naming the keys of
    `config`, when given, that changed)."""
    manifest = read_manifest(output, ["shard", "pipeline", "config_hash", "samples", "inputs", "unit_totals", "unit_sources"]).to_pylist()
    others = {(r["pipeline"], r["config_hash"]) for r in manifest} - {(pipeline, config_hash)}
    if others:
        other_pipeline, other_hash = sorted(others)[0]
        changed = _changed_since(output, other_hash, config) if config is not None and other_pipeline == pipeline else ""
        raise OutputConflict(
            f"{output} already holds {other_pipeline} shards made with config {other_hash[:12]} (this run: {pipeline}, "
            f"{config_hash[:12]}{changed}); write to another --output or remove it"
        )
    progress = Progress(shards=sum(1 for r in manifest if r["shard"]), samples=sum(r["samples"] for r in manifest))
    totals: dict[str, int] = {}
    for row in manifest:
        for entry in row["inputs"]:
            progress.consumed.setdefault(entry["unit"], set()).update(entry["ids"])
        totals.update({t["unit"]: t["total"] for t in row["unit_totals"]})
    progress.sources = unit_sources(manifest)
    for unit, total in totals.items():
        if len(progress.consumed.get(unit, ())) >= total:
            progress.complete_units.add(unit)
            progress.consumed.pop(unit, None)
    return progress


def remove_orphans(output: str) -> int:
    """Delete shards and rejects that no manifest row lists (left by a killed run), and staging files."""
    committed = {
        os.path.splitext(storage.basename(e.path))[0] for e in storage.list_dir(storage.join(output, MANIFEST)) if not is_temp(e.path)
    }
    removed = 0
    for folder in (SHARDS, REJECTS, MANIFEST):
        for entry in storage.list_dir(storage.join(output, folder)):
            name = storage.basename(entry.path)
            if is_temp(name) or (folder != MANIFEST and os.path.splitext(name)[0] not in committed):
                storage.delete(storage.uri_of(output, entry))
                removed += 1
    return removed


def write_success(output: str, summary: dict) -> None:
    """The run's summary into the output's history (``runs/``), the manifest and rejects index (``_index/``),
    then ``_SUCCESS``: the run is done."""
    data = json.dumps(summary, indent=2, sort_keys=True, default=str).encode()
    write_index(output)
    storage.write_bytes(storage.join(output, RUNS, f"{summary['run']}.json"), data)
    storage.write_bytes(storage.join(output, SUCCESS), data)
