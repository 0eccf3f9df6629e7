"""The pluggable entity-scorer interface and the weight-free ``annotation`` scorer.

A scorer says whether each entity is worth pasting. Scorers that need no pixels run before any
mask is decoded; scorers with ``needs_pixels`` (CLIP) see the RGBA crop and run as their own
pipeline stage. Every scorer is chosen by the ``entities.scorer.name`` config key, and its config's
``build()`` gives the scorer (model-backed ones, like ``clip_scorer``, load their weights there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, Sequence

from pydantic import Field

from ..dataset import Reject
from .entities import Entity
from .params import Params


@dataclass(frozen=True)
class Score:
    value: float
    reject: Reject | None = None  # why the entity fails, if it does

    @property
    def passed(self) -> bool:
        return self.reject is None


class EntityScorer(Protocol):
    name: str
    needs_pixels: bool  # a pixel scorer also has ``annotation``: the annotation scorer whose checks run before it

    def score(self, entities: Sequence[Entity]) -> list[Score]: ...


class AnnotationScorer(Params):
    """Scores from the annotations themselves: SA-1B's predicted IoU and stability; panoptic: not crowd;
    Open Images: its masks' PredictedIoU."""

    name: Literal["annotation"] = "annotation"
    min_predicted_iou: float = Field(0.88, ge=0, le=1, description="SA-1B predicted_iou, at least (SAM AMG default)")
    min_stability_score: float = Field(0.95, ge=0, le=1, description="SA-1B stability_score, at least (SAM AMG default)")
    min_labelled_iou: float = Field(0.0, ge=0, le=1, description="Open Images PredictedIoU (the mask's own quality estimate), at least")
    needs_pixels: ClassVar[bool] = False

    def build(self) -> "AnnotationScorer":
        """Every scorer config's ``build()`` gives its scorer; this one needs no model, so it is its own."""
        return self

    def score(self, entities: Sequence[Entity]) -> list[Score]:
        return [self._score_one(e) for e in entities]

    def _score_one(self, entity: Entity) -> Score:
        segment = entity.segment
        if segment.category is not None:  # human-labelled (panoptic, Open Images): crowds and poor masks go
            if segment.crowd:
                return Score(0.0, Reject.because("crowd", "panoptic segment is marked iscrowd"))
            iou = segment.scores.get("predicted_iou", 1.0)
            if iou < self.min_labelled_iou:
                return Score(iou, Reject.because("low_predicted_iou", f"PredictedIoU {iou:.3f} < min_labelled_iou={self.min_labelled_iou}"))
            return Score(iou)
        iou = segment.scores.get("predicted_iou")
        stability = segment.scores.get("stability_score")
        if iou is None or stability is None:
            return Score(0.0, Reject.because("missing_scores", "annotation lacks predicted_iou or stability_score"))
        if iou < self.min_predicted_iou:
            return Score(iou, Reject.because("low_predicted_iou", f"predicted_iou {iou:.3f} < {self.min_predicted_iou}"))
        if stability < self.min_stability_score:
            return Score(iou, Reject.because("low_stability_score", f"stability_score {stability:.3f} < {self.min_stability_score}"))
        return Score(iou)
