"""scorers: the weight-free annotation scorer (SA-1B score thresholds, panoptic crowd)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pairmine.operators.annotations import Segment
from pairmine.operators.entities import Entity
from pairmine.operators.scorers import AnnotationScorer, EntityScorer

SCORER = AnnotationScorer()  # predicted_iou >= 0.88, stability_score >= 0.95


def sa1b_entity(**scores) -> Entity:
    seg = Segment(index=0, box=(0, 0, 10, 10), area=50.0, scores=scores, rle={"size": [10, 10], "counts": "0"})
    return Entity("u/r#0", "u/r", seg, 0.5)


def panoptic_entity(crowd: bool) -> Entity:
    seg = Segment(index=0, box=(0, 0, 10, 10), area=50.0, category="person", crowd=crowd, segment_id=5)
    return Entity("u/r#0", "u/r", seg, 0.5)


@pytest.mark.parametrize(
    "scores, passed, reason",
    [
        ({"predicted_iou": 0.95, "stability_score": 0.97}, True, ""),
        ({"predicted_iou": 0.88, "stability_score": 0.95}, True, ""),  # the thresholds themselves pass
        ({"predicted_iou": 0.8799, "stability_score": 0.99}, False, "low_predicted_iou"),
        ({"predicted_iou": 0.99, "stability_score": 0.9499}, False, "low_stability_score"),
        ({"predicted_iou": 0.5, "stability_score": 0.5}, False, "low_predicted_iou"),  # iou is checked first
        ({"predicted_iou": 0.99}, False, "missing_scores"),
        ({"stability_score": 0.99}, False, "missing_scores"),
        ({}, False, "missing_scores"),
    ],
)
def test_sa1b_thresholds(scores, passed, reason):
    (score,) = SCORER.score([sa1b_entity(**scores)])
    assert (score.passed, score.reject.reason if score.reject else "") == (passed, reason)
    if "predicted_iou" in scores and "stability_score" in scores:
        assert score.value == scores["predicted_iou"]
    if not passed:
        assert score.reject.detail


def test_thresholds_are_configurable():
    entity = sa1b_entity(predicted_iou=0.7, stability_score=0.8)
    assert not SCORER.score([entity])[0].passed
    assert AnnotationScorer(min_predicted_iou=0.7, min_stability_score=0.8).score([entity])[0].passed


@pytest.mark.parametrize("crowd, passed, reason", [(False, True, ""), (True, False, "crowd")])
def test_panoptic_segments_fail_only_when_crowd(crowd, passed, reason):
    (score,) = SCORER.score([panoptic_entity(crowd)])
    assert (score.passed, score.reject.reason if score.reject else "") == (passed, reason)
    assert score.value == (1.0 if passed else 0.0)


def test_scores_keep_the_order_of_the_entities():
    entities = [sa1b_entity(predicted_iou=v, stability_score=0.99) for v in (0.9, 0.1, 0.95, 0.2)]
    assert [s.passed for s in SCORER.score(entities)] == [True, False, True, False]
    assert SCORER.score([]) == []


def test_annotation_scorer_is_an_entity_scorer_without_pixels():
    scorer: EntityScorer = SCORER
    assert scorer.name == "annotation" and scorer.needs_pixels is False


@pytest.mark.parametrize("values", [{"min_predicted_iou": 1.5}, {"min_stability_score": -0.1}, {"name": "clip"}, {"extra": 1}])
def test_scorer_params_are_validated(values):
    with pytest.raises(ValidationError):
        AnnotationScorer(**values)
