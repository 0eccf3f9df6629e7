"""The CLIP scoring stage as a Ray Data callable class (``map_batches``, ``batch_format="numpy"``).

Its own module because it applies ``syn4removal.score_entities``, while ``syn4removal`` imports the
scorer's config. One actor builds the model once; each call scores the entities of all the groups in
its batch together, in ``batch_size`` passes, and times itself so the summary can report the actor's
busy fraction and entities per busy second.
"""

from __future__ import annotations

import time
from typing import Iterator, Sequence

import numpy as np

from .clip_scorer import ClipScorer, ClipScorerParams
from .entities import Entity
from .scorers import Score
from .stats import ActorClock
from .syn4removal import score_entities


class _Scored:
    """Hands out scores computed earlier, in order: score_entities then judges each group as usual."""

    needs_pixels = True

    def __init__(self, name: str, scores: Iterator[Score]):
        self.name, self._scores = name, scores

    def score(self, entities: Sequence[Entity]) -> list[Score]:
        return [next(self._scores) for _ in entities]


class ClipScoreStage:
    """Keeps the entities of each ``Group`` in the batch's "group" column that CLIP passes; rejects the rest."""

    def __init__(self, params: ClipScorerParams):
        self.scorer = ClipScorer(params)
        self.clock = ActorClock()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        groups = list(batch["group"])
        scored = _Scored(self.scorer.name, iter(self.scorer.score([e for g in groups for e in g.entities])))
        for group in groups:
            group.stats.counts["entities_scored"] += len(group.entities)
            group.entities, rejects = score_entities(group.entities, scored)
            group.rejects += rejects
        # the actor's time, shared equally: the groups' sums are the actor's totals
        self.clock.record("score", start, [g.stats for g in groups], [1.0] * len(groups))
        return batch
