"""``pairmine verify``: check an output (local or s3://) against its contract (docs/FORMATS.md), and, given
its inputs, that every input record is accounted for exactly once.

Checks: every manifest row's shard exists with its size and sha256 and holds the keys the row lists;
no shard, rejects file or manifest temp file without a committed manifest row; no key in two shards;
every sample has its pipeline's files, its images decode to one size, its mask is neither empty nor
full, its json is strict JSON naming its key; no input id accounted for twice; and with ``--input``,
every id of every input unit in some manifest row (a sample's or a reject's). A scheduler runs it
after each run: one summary line, exit 0 (ok) or 1 (problems, listed above the line).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

from .. import dataset, storage
from ..errors import UserError
from .cli import Command, path_arg

MAX_LISTED = 20  # problems printed one per line; the rest are counted


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # kept by design, worth knowing (exit 0)
    shards: int = 0
    samples: int = 0
    rejects: int = 0
    inputs: dict = field(default_factory=dict)

    def problem(self, message: str) -> None:
        self.problems.append(message)


def _strict_json(data: bytes) -> dict:
    def refuse(token: str):
        raise ValueError(f"{token} is not JSON")

    return json.loads(data, parse_constant=refuse)


def check_sample(sample: dict, pipeline: str) -> str | None:
    """What breaks the contract in one sample, or None."""
    missing = dataset.missing_files(sample, pipeline)
    if missing:
        return f"lacks {', '.join(missing)}"
    try:
        meta = _strict_json(sample["json"])
    except (ValueError, UnicodeDecodeError) as exc:
        return f"json is not strict JSON: {storage.first_line(exc)}"
    if meta.get("key") != sample["__key__"] or meta.get("pipeline") != pipeline:
        return f"json names key {meta.get('key')!r} of {meta.get('pipeline')!r}"
    images = {}
    for name in ("source.jpg", "target.jpg", "mask.png", "alpha.png", "effect_mask.png"):
        if name in sample:
            flags = cv2.IMREAD_COLOR if name.endswith(".jpg") else cv2.IMREAD_UNCHANGED
            images[name] = cv2.imdecode(np.frombuffer(sample[name], np.uint8), flags)
            if images[name] is None:
                return f"{name} does not decode"
    size = images["source.jpg"].shape[:2]
    if any(image.shape[:2] != size for image in images.values()):
        return "its images differ in size: " + ", ".join(f"{n} {i.shape[1]}x{i.shape[0]}" for n, i in images.items())
    mask = images["mask.png"]
    if mask.ndim != 2 or not 0 < np.count_nonzero(mask) < mask.size:
        return "mask is not one channel, or is empty or full"
    return None


def check_output(output: str, samples: bool = True) -> tuple[Report, dict[str, list[str]]]:
    """The contract checks; returns the report and the ids the manifest accounts for, per unit."""
    report = Report()
    manifest = dataset.read_manifest(output, use_index=False)
    rows = manifest.to_pylist()
    names = {os.path.splitext(storage.basename(uri))[0] for uri in dataset.parquet_files(output, dataset.MANIFEST)}
    for folder in (dataset.SHARDS, dataset.REJECTS, dataset.MANIFEST):
        for entry in storage.list_dir(storage.join(output, folder)):
            name = storage.basename(entry.path)
            if dataset.is_temp(name):
                report.problem(f"{folder}/{name}: a temp file (a run in progress, or one killed)")
            elif folder != dataset.MANIFEST and os.path.splitext(name)[0] not in names:
                report.problem(f"{folder}/{name}: no manifest row lists it")
    keys: Counter[str] = Counter()
    accounted: dict[str, list[str]] = {}
    for row in rows:
        report.rejects += row["rejects"] or 0
        for entry in row["inputs"]:
            accounted.setdefault(entry["unit"], []).extend(entry["ids"])
        keys.update(row["keys"])
        if not row["shard"]:
            continue
        report.shards += 1
        shard = dataset.Shard(storage.join(output, row["shard"]), row["pipeline"], row["config_hash"], row["samples"], row["bytes"],
                              row["sha256"], tuple(row["keys"]))
        found = []
        try:
            for sample in dataset.iter_shard(shard):
                found.append(sample["__key__"])
                problem = check_sample(sample, row["pipeline"]) if samples else None
                if problem:
                    report.problem(f"{row['shard']}: sample {sample['__key__']} {problem}")
        except (dataset.ShardError, OSError) as exc:
            report.problem(storage.first_line(exc))
            continue
        report.samples += len(found)
        if found != list(row["keys"]):
            report.problem(f"{row['shard']}: holds {len(found)} samples, its manifest row lists {len(row['keys'])} other keys")
    for key, count in keys.items():
        if count > 1:
            report.problem(f"key {key} is in {count} shards")
    names: dict[tuple[str, int | None], list[str]] = {}
    for unit, (uri, size) in dataset.unit_sources(rows).items():
        if uri is not None:
            names.setdefault((uri, size), []).append(unit)
    sizes: dict[str, list[tuple[int | None, list[str]]]] = {}
    for (uri, size), units in names.items():
        if len(units) > 1:
            report.problem(f"input {uri} was read as {len(units)} units ({', '.join(sorted(units))}): its records are in the output more than once")
        sizes.setdefault(uri, []).append((size, units))
    for uri, versions in sizes.items():
        if len(versions) > 1:
            read = ", ".join(f"{size} bytes as {' / '.join(sorted(units))}" for size, units in sorted(versions, key=lambda v: v[0] or 0))
            report.notes.append(f"input {uri} changed between runs and was read at each size ({read}): records of an "
                                "earlier read that a later one also holds are in the output once per read")
    for unit, ids in accounted.items():
        twice = [i for i, n in Counter(ids).items() if n > 1]
        if twice:
            report.problem(f"input {unit}: {len(twice)} ids accounted for more than once ({', '.join(twice[:3])})")
    return report, accounted


def input_ids(pipeline: str, inputs: list[str], sources: dict[str, tuple[str | None, int | None]], config: dict | None = None) -> dict[str, set[str]]:
    """Every id of every input unit, found and named the way the pipeline finds and names them (`sources`: the
    output's committed units, ``dataset.unit_sources``; `config`: the runs', which cut videos into segments)."""
    from . import syn4removal, video4removal
    from .inputs import plan_groups, reconcile
    from .readers import tar_items

    declared = {p.name: p for p in (syn4removal.SYN4REMOVAL, video4removal.VIDEO4REMOVAL)}
    if pipeline not in declared:
        raise UserError(f"the output was written by {pipeline!r}, which verify does not know")
    ids: dict[str, set[str]] = {}
    video_config = video4removal.Video4RemovalConfig.model_validate(config or {}) if pipeline == video4removal.VIDEO4REMOVAL.name else None
    for unit in reconcile(declared[pipeline].discover(inputs), sources):
        if unit.kind == "video":  # an unreadable name too: one empty segment
            ids[unit.name] = {row["segment"] for row in video4removal.segments_of(
                {"unit": unit.name, "uri": unit.uri, "problem": unit.problem or ""}, video_config, {})}
        elif unit.problem:
            ids[unit.name] = {unit.name}
        elif unit.kind == "sa1b-tar":
            with storage.open_input_file(unit.uri) as f:
                ids[unit.name] = {i for i, _ in tar_items(f, unit.name, 1 << 62) if i is not None}
        else:
            ids[unit.name] = {i for row in plan_groups(unit, 1 << 30, set()) for i in row["consumed"]}
    return ids


def verify(output: str, inputs: list[str] = (), samples: bool = True) -> Report:
    if not storage.is_s3(output) and not os.path.isdir(output):
        raise UserError(f"output not found: {output}" + (" (a file, not a folder)" if os.path.exists(output) else ""))
    if not dataset.is_output(output):
        raise UserError(f"{output} holds no pipeline output (no {dataset.SHARDS}/, {dataset.MANIFEST}/, {dataset.REJECTS}/ or {dataset.SUCCESS})")
    report, accounted = check_output(output, samples)
    if inputs:
        rows = dataset.read_manifest(output, ["pipeline", "inputs", "unit_sources"], use_index=False).to_pylist()
        pipelines = {row["pipeline"] for row in rows}
        if len(pipelines) != 1:
            report.problem(f"the manifest names {len(pipelines)} pipelines ({', '.join(sorted(pipelines)) or 'none'}): cannot check inputs")
            return report
        pipeline = pipelines.pop()
        configs = [run["config"] for run in dataset.read_runs(output) if run.get("pipeline") == pipeline and run.get("config")]
        expected = input_ids(pipeline, list(inputs), dataset.unit_sources(rows), configs[-1] if configs else None)
        for unit, ids in sorted(expected.items()):
            missing = ids - set(accounted.get(unit, ()))
            if missing:
                report.problem(f"input {unit}: {len(missing)} of {len(ids)} ids in no sample and no reject ({', '.join(sorted(missing)[:3])})")
        report.inputs = {"units": len(expected), "ids": sum(len(v) for v in expected.values())}
    return report


def summary_line(output: str, report: Report) -> str:
    found = f"{report.shards} shards, {report.samples} samples, {report.rejects} rejects"
    if report.inputs:
        found += f"; inputs: {report.inputs['units']} units, {report.inputs['ids']} ids"
    if not report.problems:
        return f"verify {output}: ok ({found})"
    return f"verify {output}: {len(report.problems)} problems ({found})"


EXAMPLES = """examples:
  # after a run: the output alone, then with its inputs (every input record accounted for)
  pairmine verify out/syn
  pairmine verify s3://pairs/syn/v1 --input s3://data/sa1b/

  # sizes and checksums only (no sample decoded): fast on a large output
  pairmine verify s3://pairs/syn/v1 --quick"""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=path_arg, metavar="OUTPUT", help="a pipeline output folder or s3:// prefix")
    parser.add_argument("--input", action="append", default=[], type=path_arg, metavar="PATH", help="the run's inputs, as given to it (repeatable)")
    parser.add_argument("--quick", action="store_true", help="check sizes, checksums and keys; decode no sample")


def _run(args: argparse.Namespace) -> int:
    report = verify(args.output, args.input, samples=not args.quick)
    for note in report.notes[:MAX_LISTED]:
        print(f"  note: {note}")
    for problem in report.problems[:MAX_LISTED]:
        print(f"  {problem}")
    if len(report.problems) > MAX_LISTED:
        print(f"  ... and {len(report.problems) - MAX_LISTED} more")
    print(summary_line(args.output, report))
    return 1 if report.problems else 0


COMMANDS = [Command("verify", "check an output against its contract (and, given its inputs, that nothing was lost)",
                    "Verify a pipeline output, local or s3://: shards against their manifest rows (size, sha256, keys), no file "
                    "outside the manifest, no key twice, every sample complete and decodable, and every input record accounted for.",
                    EXAMPLES, _add_arguments, _run,
                    "exit codes: 0 the output keeps its contract, 1 problems found (each listed), 2 bad arguments or no output.")]
