"""Counters and stage timings that travel with each group to the writer and the run summary."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Stats:
    counts: Counter = field(default_factory=Counter)  # e.g. "records", "entities_kept", "pairs"
    seconds: Counter = field(default_factory=Counter)  # CPU-side seconds spent per stage

    @contextmanager
    def timed(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def merge(self, other: "Stats | dict") -> "Stats":
        other = other if isinstance(other, Stats) else Stats(Counter(other.get("counts", {})), Counter(other.get("seconds", {})))
        self.counts.update(other.counts)
        self.seconds.update(other.seconds)
        return self

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "seconds": {k: round(v, 6) for k, v in self.seconds.items()}}


class ActorClock:
    """Busy and idle time of an actor's calls, shared out to the stats of what each call worked on.

    Idle is the time since the previous call ended (0 on the first), so busy / (busy + idle) over a
    run is the actor's busy fraction.
    """

    def __init__(self):
        self._last_end: float | None = None

    def record(self, stage: str, started: float, stats: list[Stats], weights: list[float]) -> None:
        """Add the call that began at `started` to `stats`, in proportion to `weights` (equally when all 0)."""
        end = time.perf_counter()
        busy, idle = end - started, 0.0 if self._last_end is None else started - self._last_end
        total = sum(weights)
        for item, weight in zip(stats, weights):
            share = weight / total if total else 1 / len(stats)
            item.seconds[stage] += busy * share
            item.seconds[stage + "_idle"] += idle * share
        self._last_end = end
