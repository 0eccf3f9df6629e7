"""stats: stage timings and counters that add up across groups."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from pairmine.operators.stats import Stats


def test_timed_adds_the_elapsed_time_of_each_block():
    stats = Stats()
    for _ in range(2):
        start = time.perf_counter()
        with stats.timed("decode"):
            time.sleep(0.01)
        outer = time.perf_counter() - start
    assert 0.02 <= stats.seconds["decode"] <= 2 * outer + 0.05
    assert set(stats.seconds) == {"decode"}


def test_timed_records_even_when_the_block_raises():
    stats = Stats()
    with pytest.raises(RuntimeError):
        with stats.timed("compose"):
            time.sleep(0.005)
            raise RuntimeError("boom")
    assert stats.seconds["compose"] >= 0.005


def test_merge_adds_stats_and_their_dict_form():
    a = Stats(Counter(records=2, pairs=1), Counter(decode=0.5))
    b = Stats(Counter(records=3, images=3), Counter(decode=0.25, compose=1.0))
    c = {"counts": {"pairs": 4}, "seconds": {"compose": 0.5}}
    merged = a.merge(b).merge(c).merge({})
    assert merged is a
    assert merged.counts == Counter(records=5, pairs=5, images=3)
    assert merged.seconds == Counter(decode=0.75, compose=1.5)


def test_to_dict_roundtrips_through_merge():
    stats = Stats(Counter(records=7), Counter(decode=1.23456789))
    d = stats.to_dict()
    assert d == {"counts": {"records": 7}, "seconds": {"decode": 1.234568}}
    assert Stats().merge(d).to_dict() == d
