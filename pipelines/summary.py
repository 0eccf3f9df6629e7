"""The run summary: what was read, kept, rejected and written, and how fast each stage went."""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..operators.stats import Stats
from .inputs import VANISHED
from .model_stages import IDLE, LOST, START


def build_summary(task_results: list[dict], wall_seconds: float, stage_items: dict[str, tuple[str, ...]], **context) -> dict:
    """Merge the writer's per-task results into one summary dict (written to ``_SUCCESS``); a stage's
    throughput is counted in the first of its ``stage_items`` counts present."""
    stats = Stats()
    reasons: Counter[str] = Counter()
    shards = samples = size = rejects = 0
    signals: dict[str, list[np.ndarray]] = {}
    for result in task_results:
        stats.merge(result["stats"])
        for shard in result["shards"]:
            shards += shard["shard"] is not None
            samples += shard["samples"]
            size += shard["bytes"]
            rejects += shard["rejects"]
            reasons.update(shard["reject_reasons"])
            for name, values in shard.get("quality", {}).items():
                signals.setdefault(name, []).append(values)
    stages = {}
    for stage, seconds in sorted(stats.seconds.items()):
        if stage.endswith((IDLE, START)):
            continue
        items = next((stats.counts[k] for k in stage_items.get(stage, ()) if k in stats.counts), 0)
        stages[stage] = {
            "cpu_seconds": round(seconds, 3),
            "items": items,
            "items_per_cpu_second": round(items / seconds, 2) if seconds > 0 else None,
        }
        if stage + IDLE in stats.seconds:  # an actor stage: how busy its actors were between calls
            busy = seconds / (seconds + stats.seconds[stage + IDLE]) if seconds > 0 else 0.0
            stages[stage]["actor_busy_fraction"] = round(busy, 3)
        if stats.counts[stage + START]:  # how long its actors took to load the model before their first call
            stages[stage]["actors"] = stats.counts[stage + START]
            stages[stage]["actor_start_seconds"] = round(stats.seconds[stage + START] / stats.counts[stage + START], 3)
    return {
        **context,
        "counts": dict(sorted((k, v) for k, v in stats.counts.items() if not k.endswith(START))),
        "written": {"shards": shards, "samples": samples, "bytes": size},
        "rejects": {"total": rejects, "by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))},
        "stages": stages,
        "quality": {name: _distribution(np.concatenate(parts)) for name, parts in sorted(signals.items())},
        "wall_seconds": round(wall_seconds, 3),
        "samples_per_second": round(samples / wall_seconds, 3) if wall_seconds > 0 else None,
    }


def _distribution(values: np.ndarray) -> dict:
    """How a quality signal is spread over the written samples."""
    p10, p50, p90 = np.percentile(values, [10, 50, 90]).tolist()
    return {"count": int(values.size), "mean": round(float(values.mean()), 4), "p10": round(p10, 4), "p50": round(p50, 4), "p90": round(p90, 4)}


def format_summary(summary: dict) -> str:
    """A short human-readable version for the terminal."""
    written, rejects = summary["written"], summary["rejects"]
    lines = [
        f"{summary['pipeline']} run {summary['run']} finished in {summary['wall_seconds']:.1f} s "
        f"({summary['samples_per_second'] or 0:.2f} samples/s): {summary.get('status', 'done').replace('_', ' ')}",
        f"  inputs: {summary['units']['planned']} units to do, {summary['units']['already_complete']} already complete",
        "  counts: " + ", ".join(f"{k} {v}" for k, v in summary["counts"].items()),
        f"  written: {written['samples']} samples in {written['shards']} shards ({written['bytes'] / 1e6:.1f} MB)",
        f"  rejects: {rejects['total']}" + ("" if not rejects["by_reason"] else " — " + ", ".join(f"{k} {v}" for k, v in rejects["by_reason"].items())),
        *([f"  no samples: every input this run read was rejected (first: {next(iter(rejects['by_reason']))}); "
           "the reasons and details are in rejects/ (`pairmine report`)"]
          if rejects["total"] > rejects["by_reason"].get(f"read/{VANISHED}", 0) and not written["samples"] else []),
        *([f"  lost: {summary['counts'][LOST]} groups / segments went with a worker that died while they waited for the model "
           "stage; their inputs are not marked done: run the same command again to mine them"] if summary["counts"].get(LOST) else []),
        "  stages (seconds, items per second): "
        + ", ".join(
            f"{k} {v['cpu_seconds']:.2f}s/{v['items_per_cpu_second']}"
            + (f" ({v['actor_busy_fraction']:.0%} busy)" if "actor_busy_fraction" in v else "")
            + (f" ({v['actors']} actors, {v['actor_start_seconds']:.1f}s each to load)" if "actors" in v else "")
            for k, v in summary["stages"].items()
        ),
        *(["  quality (p10 / median / p90): " + ", ".join(f"{k} {v['p10']:g} / {v['p50']:g} / {v['p90']:g}" for k, v in summary["quality"].items())]
          if summary.get("quality") else []),
        f"  output: {summary['output']} (shards/, manifest/, rejects/, _SUCCESS)",
        f"  totals in output: {summary['output_totals']['samples']} samples in {summary['output_totals']['shards']} shards",
    ]
    return "\n".join(lines)
