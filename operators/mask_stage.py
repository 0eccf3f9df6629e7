"""The Video4Removal masking stage as a Ray Data callable class (``map_batches``, ``batch_format="numpy"``).

One actor builds its masker once (a model-based one loads its weights there); each call masks the
candidates of every ``SegmentWork`` in the batch, in one ``masks()`` call across segments when the
masker's items are independent, one call per segment when they form a clip (SAM2 propagation). It
times itself so the summary can report the actor's busy fraction and items per busy second.
"""

from __future__ import annotations

import time

import numpy as np

from .gdino_sam2 import GdinoSam2MaskerParams
from .maskers import MaskInput, MaskResult, MogMasker
from .stats import ActorClock


def _split(results: list[MaskResult], sizes: list[int]) -> list[list[MaskResult]]:
    """One flat list of results back into consecutive groups of the given sizes."""
    bounds = np.cumsum([0, *sizes])
    return [results[start:stop] for start, stop in zip(bounds, bounds[1:])]


class MaskStage:
    """Adds the column "results" (a list of MaskResult per work, one per candidate) to batches of "work"."""

    def __init__(self, params: GdinoSam2MaskerParams | MogMasker):
        self.masker = params.build()
        self.clock = ActorClock()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        works = list(batch["work"])
        clips: list[list[MaskInput]] = [[c.mask_input() for c in work.candidates] for work in works]
        if self.masker.items_are_clip:
            grouped = [self.masker.masks(clip) if clip else [] for clip in clips]
        else:
            grouped = _split(self.masker.masks([item for clip in clips for item in clip]), [len(c) for c in clips])
        results = np.empty(len(works), dtype=object)
        for k, (work, clip) in enumerate(zip(works, clips)):
            results[k] = grouped[k]
            work.stats.counts["masked"] += len(clip)
        # the actor's time, shared by item count: the works' sums are its totals
        self.clock.record("mask", start, [w.stats for w in works], [float(len(c)) for c in clips])
        return {**batch, "results": results}
