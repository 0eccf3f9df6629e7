"""The run summary a user reads at the end of a run."""

from __future__ import annotations

from pairmine.pipelines.summary import build_summary, format_summary


def _summary(samples: int, rejects: dict[str, int]) -> dict:
    shard = {"shard": "s" if samples else None, "samples": samples, "bytes": 10 * samples, "rejects": sum(rejects.values()), "reject_reasons": rejects}
    return build_summary([{"stats": {}, "shards": [shard]}], 1.0, {}, pipeline="syn4removal", run="r", output="o",
                         units={"planned": 1, "already_complete": 0}, output_totals={"samples": samples, "shards": int(bool(samples))})


def test_a_run_whose_every_record_was_rejected_says_so():
    """Exit 0 with 0 samples (a tar laid out in folders, a wrong input kind) read like success."""
    text = format_summary(_summary(0, {"read/missing_image": 3, "read/missing_annotations": 2}))
    assert "no samples: every input this run read was rejected (first: read/missing_image)" in text
    assert "no samples" not in format_summary(_summary(4, {"read/missing_image": 3}))
    assert "no samples" not in format_summary(_summary(0, {})), "nothing read: nothing to say"
    assert "no samples" not in format_summary(_summary(0, {"read/input_vanished": 2})), "gone before they were read"
