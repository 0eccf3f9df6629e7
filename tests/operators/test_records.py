"""records: rejects serialise to rows, and sample keys are deterministic, distinct and WebDataset-safe."""

from __future__ import annotations

import re

import pytest

from pairmine.operators.records import Instance, Reject, sample_key


def test_reject_to_dict_has_the_rejects_table_columns():
    reject = Reject("u/r", "decode", "truncated_image", "ends early")
    assert reject.to_dict() == {"input": "u/r", "stage": "decode", "reason": "truncated_image", "detail": "ends early"}
    assert Reject("u/r", "read", "x").to_dict()["detail"] == ""


def test_records_are_immutable():
    with pytest.raises(AttributeError):
        Reject("u/r", "read", "x").reason = "y"
    with pytest.raises(AttributeError):
        Instance((0, 0, 1, 1), 1.0).area = 2.0


def test_sample_key_is_deterministic():
    assert sample_key("sa_000000.tar/sa_100", "abc123", 0) == sample_key("sa_000000.tar/sa_100", "abc123", 0)


@pytest.mark.parametrize(
    "other",
    [
        ("sa_000000.tar/sa_101", "abc123", 0),  # another record
        ("sa_000001.tar/sa_100", "abc123", 0),  # same stem in another unit
        ("sa_000000.tar/sa_100", "abc124", 0),  # another config
        ("sa_000000.tar/sa_100", "abc123", 1),  # another triplet of the same background
    ],
)
def test_sample_key_differs_when_any_input_differs(other):
    assert sample_key(*other) != sample_key("sa_000000.tar/sa_100", "abc123", 0)


@pytest.mark.parametrize(
    "record",
    ["sa_000000.tar/sa_100", "val2017/000000142238", "u/name with spaces.and.dots", "u/ünïcode/x:y", "u/" + "x" * 200],
)
def test_sample_key_is_webdataset_safe(record):
    key = sample_key(record, "cfg", 3)
    assert "." not in key and "/" not in key  # WebDataset splits extensions at the first dot
    assert re.fullmatch(r"[A-Za-z0-9_-]+", key)
    assert key.endswith("-03") and len(key) <= 48 + 1 + 10 + 1 + 2


def test_sample_key_starts_with_the_record_name():
    assert sample_key("sa_000000.tar/sa_100", "cfg", 0).startswith("sa_100-")
