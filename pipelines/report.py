"""``pairmine report OUTPUT``: one self-contained HTML page to judge an output at a glance.

A contact sheet of sampled pairs (source | mask over source | target), histograms of the samples'
signals (mask area, scores, MSE, crop sizes, quality), rejects by reason and by input, counts per input
unit and per shard, the run history and the last run's per-stage counters, and the config with its
hash. Everything comes through the output contract (``pairmine.dataset``): the manifest and rejects
tables (only the columns used), ``runs/`` and ``_SUCCESS``, and from the shards only the members read:
sample JSONs and a few images, found by tar headers (``dataset.shard_members``), never whole shards.
Images are embedded (base64 JPEG), charts are inline SVG: the page is one file that opens anywhere.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import random
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from .. import dataset, storage
from ..errors import UserError
from ..operators.codecs import BadInput, decode_image
from .cli import Command, count_arg, path_arg

# The numbers of a sample's json plotted per pipeline: a path to a dict plots each numeric leaf under it.
SIGNALS = {
    "syn4removal": ("mask.area_ratio", "mask.object_area_ratio", "entity.scores", "entity.source_area_ratio", "paste.scale",
                    "paste.max_instance_overlap", "quality"),
    "video4removal": ("mask_ratio", "effect_ratio", "mse", "changed", "shift_px", "motion", "crop_side_px", "quality"),
}
CAPTION = {"syn4removal": ("mask.area_ratio", "entity.scores.annotation"), "video4removal": ("mask_ratio", "mse")}
TABLE_ROWS = 200  # rows shown per table; the rest are counted
THUMB_HEIGHT = 180


@dataclass
class Sampled:
    signals: dict[str, list[float]] = field(default_factory=dict)
    sheet: list[dict] = field(default_factory=list)  # {"key", "caption", "images": [data URIs]}
    samples_read: int = 0
    shards_read: int = 0
    damaged: list[str] = field(default_factory=list)  # what could not be read, one line each


def _numbers(meta: dict, path: str) -> dict[str, float]:
    """The numeric value at a dotted path, or every numeric leaf below it, by full path."""
    value = meta
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool) or value is None:
        return {}
    if isinstance(value, (int, float)):
        return {path: float(value)} if math.isfinite(value) else {}
    if isinstance(value, dict):
        return {k: v for key in value for k, v in _numbers(meta, f"{path}.{key}").items()}
    return {}


def _with_derived(meta: dict) -> dict:
    if isinstance(meta.get("crop"), list) and len(meta["crop"]) == 4:  # video region pairs: [x0, y0, x1, y1]
        x0, y0, x1, y1 = meta["crop"]
        meta = meta | {"crop_side_px": max(x1 - x0, y1 - y0)}
    return meta


def _thumb(image: np.ndarray) -> str:
    scale = THUMB_HEIGHT / image.shape[0]
    small = cv2.resize(image, (max(1, round(image.shape[1] * scale)), THUMB_HEIGHT), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode()


MAX_SHEET_PIXELS = 100_000_000  # a sample's image larger than this is not drawn (its decode would be ~300 MB)


def _sheet_row(uri: str, members: dict[str, dataset.Member], meta: dict, pipeline: str) -> dict | str:
    """Source | mask over source (red) | target thumbnails of one sample, or what is wrong with it."""
    images = {}
    for name in ("source.jpg", "target.jpg", "mask.png"):
        try:  # the codec's checks: a file cut short (a JPEG without its end marker) is not drawn half grey
            images[name], _ = decode_image(dataset.read_member(uri, members[name]), MAX_SHEET_PIXELS)
        except (BadInput, cv2.error, OSError) as exc:
            return f"{storage.basename(uri)}: sample {meta.get('key', '?')}: its {name} does not decode ({storage.first_line(exc)[:120]})"
    source, target, mask = images["source.jpg"], images["target.jpg"], cv2.cvtColor(images["mask.png"], cv2.COLOR_BGR2GRAY) > 0
    if not source.shape[:2] == target.shape[:2] == mask.shape:
        return f"{storage.basename(uri)}: sample {meta.get('key', '?')}: its source, target and mask differ in size"
    overlay = source.copy()
    overlay[mask] = (0.45 * overlay[mask] + 0.55 * np.array([40, 40, 255])).astype(np.uint8)
    caption = ", ".join(f"{p.rsplit('.', 1)[-1]} {v:.3g}" for p in CAPTION[pipeline] for v in _numbers(meta, p).values())
    return {"key": meta.get("key", ""), "caption": caption, "images": [_thumb(source), _thumb(overlay), _thumb(target)]}


def sample(shards: list[dataset.Shard], pipeline: str, max_shards: int, per_shard: int, sheet_size: int, seed: int = 0) -> Sampled:
    """Signals of the first `per_shard` samples of up to `max_shards` shards spread over the output,
    and a contact sheet of `sheet_size` of them; reads only their JSONs and the sheet's images."""
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(shards)), min(max_shards, len(shards))))

    def read(i: int) -> tuple[list[tuple[str, dict[str, dataset.Member], dict]], list[str]]:
        """The sampled samples of shard `i` with their parsed JSON, and what could not be read."""
        shard, found, damaged = shards[i], [], []
        name = storage.basename(shard.uri)
        by_key: dict[str, dict[str, dataset.Member]] = {}
        try:
            for member in dataset.shard_members(shard.uri, per_shard):
                by_key.setdefault(member.key, {})[member.name] = member
        except (tarfile.TarError, OSError) as exc:
            damaged.append(f"{name}: its tar does not read after {len(by_key)} samples ({storage.first_line(exc)})")
        if len(by_key) < min(per_shard, shard.samples) and not damaged:
            damaged.append(f"{name}: {len(by_key)} samples readable of the {min(per_shard, shard.samples)} asked for (cut short?)")
        for key, files in by_key.items():
            try:
                found.append((shard.uri, files, json.loads(dataset.read_member(shard.uri, files["json"]))))
            except (KeyError, ValueError, OSError) as exc:
                damaged.append(f"{name}: sample {key}: its json does not read ({type(exc).__name__})")
        return found, damaged

    with ThreadPoolExecutor(16) as pool:
        read_back = list(pool.map(read, chosen))
    found = [item for items, _ in read_back for item in items]
    result = Sampled(samples_read=len(found), shards_read=len(chosen), damaged=[line for _, lines in read_back for line in lines])
    for _, _, meta in found:
        meta = _with_derived(meta)
        for path in SIGNALS[pipeline]:
            for name, value in _numbers(meta, path).items():
                result.signals.setdefault(name, []).append(value)
    picks = sorted(rng.sample(range(len(found)), min(sheet_size, len(found))))
    drawable = [found[i] for i in picks if {"source.jpg", "target.jpg", "mask.png"} <= set(found[i][1])]
    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(lambda item: _sheet_row(*item, pipeline), drawable))
    result.sheet = [row for row in rows if isinstance(row, dict)]
    result.damaged += [row for row in rows if isinstance(row, str)]
    return result


def _by_unit(manifest: pa.Table, rejects: pa.Table) -> list[dict]:
    """Per input unit: ids accounted for, the unit's total when known, rejects."""
    inputs = pc.list_flatten(manifest["inputs"])
    done = pa.table({"unit": pc.struct_field(inputs, "unit"), "ids": pc.list_value_length(pc.struct_field(inputs, "ids"))})
    done = done.group_by("unit").aggregate([("ids", "sum")]).to_pylist()
    totals_flat = pc.list_flatten(manifest["unit_totals"])
    totals = dict(zip(pc.struct_field(totals_flat, "unit").to_pylist(), pc.struct_field(totals_flat, "total").to_pylist()))
    per_unit_rejects = _rejects_by_unit(rejects, {row["unit"] for row in done})
    return sorted(
        ({"unit": row["unit"], "ids": row["ids_sum"], "total": totals.get(row["unit"]), "rejects": per_unit_rejects.get(row["unit"], 0)}
         for row in done), key=lambda r: r["unit"],
    )


def _rejects_by_unit(rejects: pa.Table, units: set[str]) -> dict[str, int]:
    """Reject counts per unit: an input id is `<unit>/<id>`, and a unit name may itself hold slashes."""
    counts = rejects.group_by("input").aggregate([("input", "count")]) if rejects.num_rows else None
    found: dict[str, int] = {}
    if counts is None:
        return found
    for input_id, count in zip(counts["input"].to_pylist(), counts["input_count"].to_pylist()):
        parts = (input_id or "").split("/")
        unit = next(("/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1) if "/".join(parts[:i]) in units), parts[0])
        found[unit] = found.get(unit, 0) + count
    return found


def collect(output: str, max_shards: int = 32, per_shard: int = 32, sheet_size: int = 24) -> dict:
    """Everything the page shows, as plain data."""
    manifest = dataset.read_manifest(output, ["shard", "pipeline", "run", "config_hash", "version", "samples", "bytes", "sha256",
                                              "inputs", "unit_totals", "rejects", "created"])
    if not manifest.num_rows and not storage.exists(storage.join(output, dataset.SUCCESS)):
        raise UserError(f"{output} holds no pipeline output (no manifest rows, no {dataset.SUCCESS})")
    rejects = dataset.read_rejects(output, ["input", "stage", "reason"])
    runs = {r["run"]: r for r in dataset.read_runs(output) if r.get("run")}
    latest = dataset.read_success(output) or (list(runs.values())[-1] if runs else {})
    if latest.get("run"):
        runs.setdefault(latest["run"], latest)
    # a scheduled rerun with nothing new leaves the output as the last run that worked left it: that run describes it
    worked = [r for r in runs.values() if r.get("status") != dataset.NOTHING_TO_DO]
    success = max(worked, key=lambda r: r["run"]) if latest.get("status") == dataset.NOTHING_TO_DO and worked else latest
    pipeline = success.get("pipeline") or (manifest["pipeline"][0].as_py() if manifest.num_rows else "syn4removal")
    shards = dataset.committed_shards(output, manifest)
    history = {row["run"]: row for row in manifest.group_by("run").aggregate(
        [("shard", "count"), ("samples", "sum"), ("rejects", "sum"), ("bytes", "sum"), ("created", "min"), ("created", "max")]).to_pylist()}
    reasons = rejects.group_by(["stage", "reason"]).aggregate([("reason", "count")]).sort_by([("reason_count", "descending")]).to_pylist()
    return {
        "output": output,
        "pipeline": pipeline,
        "status": success.get("status", "unknown (no _SUCCESS: a run is in progress, or none finished)" if not success else "done"),
        "latest_run": latest.get("run") if latest is not success else None,  # a later run that had nothing to do
        "config": success.get("config", {}),
        "config_hash": success.get("config_hash") or (manifest["config_hash"][0].as_py() if manifest.num_rows else ""),
        "version": success.get("version", ""),
        "totals": {"shards": len(shards), "samples": pc.sum(manifest["samples"]).as_py() or 0, "rejects": rejects.num_rows,
                   "bytes": pc.sum(manifest["bytes"]).as_py() or 0},
        "last_run": {k: success.get(k) for k in ("run", "counts", "stages", "wall_seconds", "samples_per_second", "units", "cluster")},
        "runs": [_run_row(run, history.get(run), runs.get(run)) for run in sorted(set(history) | set(runs), reverse=True)
                 if run in history or runs[run].get("status") != dataset.NOTHING_TO_DO],
        "idle_runs": sum(1 for run, summary in runs.items() if run not in history and summary.get("status") == dataset.NOTHING_TO_DO),
        "rejects_by_reason": [{"stage": r["stage"], "reason": r["reason"], "count": r["reason_count"]} for r in reasons],
        "units": _by_unit(manifest, rejects),
        "shards": sorted(({"shard": storage.basename(r["shard"]), "run": r["run"], "samples": r["samples"], "bytes": r["bytes"],
                           "rejects": r["rejects"]} for r in manifest.select(["shard", "run", "samples", "bytes", "rejects"]).to_pylist()
                          if r["shard"]), key=lambda r: r["shard"]),
        "sampled": sample(shards, pipeline, max_shards, per_shard, sheet_size),
    }


def _run_row(run: str, written: dict | None, summary: dict | None) -> dict:
    written, summary = written or {}, summary or {}
    created = written.get("created_min")
    return {
        "run": run, "status": summary.get("status", "no summary (killed, or still running)"),
        "started": created.strftime("%Y-%m-%d %H:%M") if created else _started(run),
        "shards": written.get("shard_count", 0), "samples": written.get("samples_sum", 0), "rejects": written.get("rejects_sum", 0),
        "wall_seconds": summary.get("wall_seconds"), "samples_per_second": summary.get("samples_per_second"),
        "units": (summary.get("units") or {}).get("planned"), "version": summary.get("version", ""),
    }


def _started(run: str) -> str:
    """When a run that wrote no shard started, from its id (``20261205T161333Z...``, UTC)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.strptime(run[:16], "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return run


# ---- rendering ------------------------------------------------------------------------------------

def _e(value) -> str:
    return html.escape(str(value))


def _table(rows: list[dict], columns: list[str], caption: str = "") -> str:
    shown = rows[:TABLE_ROWS]
    more = f"<p class=more>{len(rows) - len(shown)} more rows not shown ({len(rows)} in all)</p>" if len(rows) > len(shown) else ""
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in shown)
    return f"<table>{f'<caption>{_e(caption)}</caption>' if caption else ''}<tr>{head}</tr>{body}</table>{more}"


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return _e(value)


def histogram_svg(values: list[float], title: str, bins: int = 24, width: int = 300, height: int = 110) -> str:
    """A small inline-SVG histogram with its count, min, median and max."""
    data = np.asarray(values, float)
    lo, hi = float(data.min()), float(data.max())
    counts, _ = np.histogram(data, bins=bins, range=(lo, hi if hi > lo else lo + 1))
    bar_w, top = width / bins, max(1, counts.max())
    bars = "".join(
        f'<rect x="{i * bar_w + 0.5:.1f}" y="{height - 18 - c / top * (height - 34):.1f}" width="{bar_w - 1:.1f}" '
        f'height="{c / top * (height - 34):.1f}"><title>{c}</title></rect>' for i, c in enumerate(counts)
    )
    return (
        f'<figure class=hist><svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{_e(title)}">'
        f'<text x="0" y="11" class=t>{_e(title)}</text>{bars}'
        f'<text x="0" y="{height - 4}">{lo:.3g}</text><text x="{width}" y="{height - 4}" text-anchor="end">{hi:.3g}</text></svg>'
        f"<figcaption>n {len(data):,} · median {np.median(data):.3g}</figcaption></figure>"
    )


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:110px}
.card b{display:block;font-size:18px}.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
.pair{border:1px solid #ddd;border-radius:6px;padding:6px}.pair img{height:120px;margin-right:4px}.pair div{font-size:12px;color:#555}
.hists{display:flex;flex-wrap:wrap;gap:12px}.hist{margin:0;border:1px solid #eee;padding:4px}.hist rect{fill:#4a78c2}
.hist text{font-size:10px;fill:#444}.hist text.t{font-size:11px;fill:#111}figcaption{font-size:11px;color:#555}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:13px}
th{background:#f4f4f4}pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}.more{color:#777;font-size:12px}
.warn{border:1px solid #e0a000;background:#fff8e0;border-radius:6px;padding:8px 12px;margin:12px 0}
"""


def _pair(row: dict) -> str:
    images = "".join(f'<img alt="{name}" src="{src}">' for name, src in zip(("source", "mask", "target"), row["images"]))
    return f"<div class=pair>{images}<div>{_e(row['key'])} · {_e(row['caption'])}</div></div>"


def _damaged(lines: list[str]) -> str:
    """A warning for what the sampling could not read (the page is still written): `verify` checks it all."""
    if not lines:
        return ""
    items = "".join(f"<li>{_e(line)}</li>" for line in lines[:TABLE_ROWS])
    more = f"<p class=more>{len(lines) - TABLE_ROWS} more not shown</p>" if len(lines) > TABLE_ROWS else ""
    return (f"<div class=warn id=damaged><b>{len(lines)} damaged item(s) among the sampled shards</b> "
            f"(run <code>pairmine verify OUTPUT</code> for all of them)<ul>{items}</ul>{more}</div>")


def render(data: dict) -> str:
    """The page, from `collect`'s data."""
    totals, sampled, last = data["totals"], data["sampled"], data["last_run"]
    status = data["status"] + (f" (run {data['latest_run']} since: nothing to do)" if data.get("latest_run") else "")
    cards = [("status", status), ("samples", totals["samples"]), ("shards", totals["shards"]), ("rejects", totals["rejects"]),
             ("input units", len(data["units"])), ("size", f"{totals['bytes'] / 1e6:,.1f} MB"), ("runs", len(data["runs"]) + data["idle_runs"])]
    sheet = "".join(_pair(row) for row in sampled.sheet)
    hists = "".join(histogram_svg(v, name) for name, v in sorted(sampled.signals.items()) if v)
    stages = [{"stage": k, **v} for k, v in (last.get("stages") or {}).items()]
    counts = [{"counter": k, "value": v} for k, v in (last.get("counts") or {}).items()]
    return f"""<!doctype html><html lang=en><head><meta charset=utf-8><title>pairmine report: {_e(data['output'])}</title>
<style>{STYLE}</style></head><body>
<h1>pairmine report: {_e(data['pipeline'])}</h1><p>{_e(data['output'])} · config {_e(data['config_hash'][:12])} · version {_e(data['version'])}
· made {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>
<div class=cards id=totals>{"".join(f'<div class=card><b data-count="{_e(k)}">{_fmt(v)}</b>{_e(k)}</div>' for k, v in cards)}</div>
<h2>Pairs (source · mask over source · target)</h2><p>{len(sampled.sheet)} pairs drawn from {sampled.shards_read} shards</p>
<div class=sheet id=sheet>{sheet or '<p>no samples</p>'}</div>
{_damaged(sampled.damaged)}
<h2>Signals</h2><p>{sampled.samples_read:,} samples read (their JSON only) from {sampled.shards_read} of {totals['shards']:,} shards</p>
<div class=hists id=signals>{hists or '<p>no samples</p>'}</div>
<h2>Rejects by reason</h2>{_table(data['rejects_by_reason'], ['stage', 'reason', 'count'])}
<h2>Inputs</h2>{_table(data['units'], ['unit', 'ids', 'total', 'rejects'])}
<h2>Shards</h2>{histogram_svg([s['samples'] for s in data['shards']], 'samples per shard') if data['shards'] else ''}
{_table(data['shards'], ['shard', 'run', 'samples', 'bytes', 'rejects'])}
<h2>Runs</h2><p>newest first{f"; {data['idle_runs']:,} runs that had nothing to do are not listed" if data.get('idle_runs') else ""}</p>
{_table(data['runs'], ['run', 'started', 'status', 'units', 'shards', 'samples', 'rejects', 'wall_seconds', 'samples_per_second', 'version'])}
<h2>Last run: stages and counters</h2>{_table(stages, ['stage', 'cpu_seconds', 'items', 'items_per_cpu_second', 'actor_busy_fraction', 'actors', 'actor_start_seconds'])}
{_table(counts, ['counter', 'value'])}
<h2>Config</h2><p>hash {_e(data['config_hash'])}</p><pre>{_e(json.dumps(data['config'], indent=2, sort_keys=True))}</pre>
</body></html>"""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=path_arg, metavar="OUTPUT", help="a pipeline output: local folder or s3:// prefix")
    parser.add_argument("--out", type=path_arg, metavar="FILE", help="where to write the page (default: report.html in the current folder)")
    parser.add_argument("--shards", type=count_arg, default=32, metavar="N", help="shards sampled for signals and pairs (default 32)")
    parser.add_argument("--per-shard", type=count_arg, default=32, metavar="N", help="samples read per sampled shard (default 32)")
    parser.add_argument("--pairs", type=count_arg, default=24, metavar="N", help="pairs on the contact sheet (default 24)")


def _run(args: argparse.Namespace) -> int:
    if not storage.is_s3(args.output) and not os.path.isdir(args.output):
        raise UserError(f"output not found: {args.output}")
    if args.out and dataset.in_layout(args.output, args.out):
        raise UserError(f"--out {args.out} is inside the output's own files: the page would damage it; write it elsewhere")
    if args.out and storage.info(args.out).type == pafs.FileType.Directory:
        raise UserError(f"--out {args.out} is a folder: give the page's file name (e.g. {storage.join(args.out, 'report.html')})")
    started = time.perf_counter()
    try:
        data = collect(args.output, args.shards, args.per_shard, args.pairs)
    except UserError:
        if storage.is_s3(args.output):  # a missing or unreachable bucket says so (its root is listed only now: a
            storage.check_readable(f"s3://{args.output[len('s3://'):].split('/', 1)[0]}")  # key may allow a prefix only)
        raise
    out = args.out or "report.html"
    storage.write_bytes(out, render(data).encode())
    print(f"report: {out} ({data['totals']['samples']:,} samples in {data['totals']['shards']:,} shards, "
          f"{data['totals']['rejects']:,} rejects; {time.perf_counter() - started:.1f} s)")
    return 0


COMMANDS = [
    Command(
        "report",
        "write one HTML page to judge an output: pairs, signals, rejects, runs",
        "Write a self-contained HTML page (images embedded) about a pipeline output: a contact sheet of sampled\n"
        "pairs, histograms of their signals, rejects by reason and input, counts per input and shard, the run\n"
        "history and the config. Reads the manifest and only the sampled samples' files, not whole shards.",
        "examples:\n  pairmine report out/sample --out out/sample-report.html\n  pairmine report s3://bucket/shards/syn4removal/v1 --out report.html --shards 64",
        _add_arguments,
        _run,
    )
]
