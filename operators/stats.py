"""Counters and stage timings that travel with each unit of work to the writer and the run summary."""

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

