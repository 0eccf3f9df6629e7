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


def _split(results: list[MaskResult], sizes: list[int]) -> list[list[MaskResult]]:
    """One flat list of results back into consecutive groups of the given sizes."""
    bounds = np.cumsum([0, *sizes])
    return [results[start:stop] for start, stop in zip(bounds, bounds[1:])]


class MaskStage:
    """Adds the column "results" (a list of MaskResult per work, one per candidate) to batches of "work"."""

    def __init__(self, params: GdinoSam2MaskerParams | MogMasker):
        self.masker = params.build()
        self._last_return: float | None = None  # when the previous call ended: the idle time starts there

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        works = list(batch["work"])
        clips: list[list[MaskInput]] = [[c.mask_input() for c in work.candidates] for work in works]
        if self.masker.items_are_clip:
            grouped = [self.masker.masks(clip) if clip else [] for clip in clips]
        else:
            grouped = _split(self.masker.masks([item for clip in clips for item in clip]), [len(c) for c in clips])
        end = time.perf_counter()
        idle = 0.0 if self._last_return is None else start - self._last_return
        total = sum(len(clip) for clip in clips)
        results = np.empty(len(works), dtype=object)
        for k, (work, clip) in enumerate(zip(works, clips)):
            results[k] = grouped[k]
            # the actor's time, shared by item count (equally when no work has any): the works' sums are its totals
            share = len(clip) / total if total else 1 / len(works)
            work.stats.counts["masked"] += len(clip)
            work.stats.seconds["mask"] += (end - start) * share
            work.stats.seconds["mask_idle"] += idle * share
        self._last_return = time.perf_counter()
        return {**batch, "results": results}
