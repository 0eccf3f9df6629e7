"""Pairing: the best background frame, and each guard (MSE, stray change, object still there, misalignment)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pairmine.operators.video_pairing import Miss, Pair, PairingParams, masked_mse, pair_frame, residual_shift, select_diverse

PARAMS = PairingParams()
FULL_WIDTH = 960
SOURCE = 25  # sample 25 = frame 75: the object mid-way across the scene


@pytest.fixture(scope="module")
def run(static_clip):
    """The static clip's images, greys and ground-truth masks (analysis size)."""
    images, masks = static_clip
    return images, [cv2.cvtColor(i, cv2.COLOR_BGR2GRAY) for i in images], masks


def _pair(images, greys, masks, backgrounds, params=PARAMS):
    no_shadow = np.zeros_like(masks[SOURCE])
    return pair_frame(SOURCE, images, greys, masks[SOURCE], no_shadow, backgrounds, np.zeros((len(images), 2)), FULL_WIDTH, params)


def test_masked_mse_is_the_mean_squared_error_over_the_mask():
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(2))
    keep = (rng.random((40, 60)) < 0.3).astype(np.uint8)
    expected = ((a.astype(float) - b) ** 2)[keep > 0].mean()
    assert masked_mse(a, b, keep) == pytest.approx(expected)


def test_the_pair_is_an_aligned_object_free_frame(run):
    images, greys, masks = run
    backgrounds = [i for i, m in enumerate(masks) if not m.any()]
    pair = _pair(images, greys, masks, backgrounds)
    assert isinstance(pair, Pair) and pair.target in backgrounds
    assert pair.mse <= PARAMS.max_mse and pair.changed >= PARAMS.min_changed and pair.shift <= PARAMS.max_shift_px


def test_a_background_frame_that_still_holds_the_object_is_refused(run):
    images, greys, masks = run
    miss = _pair(images, greys, masks, [SOURCE])  # e.g. the object stopped and MOG2 absorbed it
    assert isinstance(miss, Miss) and miss.reject.reason == "object_in_background"


def test_a_mask_of_edge_slivers_is_refused_before_any_background_frame(run):
    """An object that stands still long enough is taken into MOG2's background (learned over the run, from its
    median): its mask is only the edges it sways by, every frame still shows it, and the sliver mask passed the
    object_in_background test (the probe: 4 of 5 region pairs with the whole object in the target)."""
    images, greys, masks = run
    solid = masks[SOURCE]
    slivers = solid - cv2.erode(solid, np.ones((3, 3), np.uint8))  # its 1-px outline, where a sway shows
    backgrounds = [i for i, m in enumerate(masks) if not m.any()]
    no_shadow = np.zeros_like(solid)
    miss = pair_frame(SOURCE, images, greys, slivers, no_shadow, backgrounds, np.zeros((len(images), 2)), FULL_WIDTH, PARAMS)
    assert isinstance(miss, Miss) and miss.reject.reason == "mask_slivers"
    assert isinstance(_pair(images, greys, masks, backgrounds), Pair), "the object's own mask has its core"


def test_a_background_frame_with_something_else_in_it_is_refused(run):
    images, greys, masks = run
    polluted = images[0].copy()
    ys, xs = np.nonzero(masks[SOURCE])
    polluted[ys, (xs + 200) % 480] = images[SOURCE][ys, xs]  # the object, copied elsewhere into the "background"
    loose = PairingParams(max_mse=1e4)  # a small stray object barely moves the MSE; let the stray check decide
    miss = _pair(images + [polluted], greys + [cv2.cvtColor(polluted, cv2.COLOR_BGR2GRAY)], masks, [len(images)], loose)
    assert isinstance(miss, Miss) and miss.reject.reason == "background_differs"


def test_a_shifted_background_frame_is_misaligned(run):
    images, greys, masks = run
    shifted = cv2.warpAffine(images[0], np.float32([[1, 0, 1.0], [0, 1, 0]]), (480, 270), borderMode=cv2.BORDER_REFLECT)
    loose = PairingParams(max_mse=1e4, max_stray=1.0)  # let only the alignment check decide
    miss = _pair(images + [shifted], greys + [cv2.cvtColor(shifted, cv2.COLOR_BGR2GRAY)], masks, [len(images)], loose)
    assert isinstance(miss, Miss) and miss.reject.reason == "misaligned"
    assert isinstance(_pair(images, greys, masks, [0], loose), Pair)


def test_residual_shift_measures_a_subpixel_translation_outside_the_object(run):
    _, greys, masks = run
    keep = (masks[SOURCE] == 0).astype(np.uint8)
    moved = cv2.warpAffine(greys[0], np.float32([[1, 0, 0.4], [0, 1, -0.3]]), (480, 270), borderMode=cv2.BORDER_REFLECT)
    assert residual_shift(greys[0], moved, keep, np.zeros(2)) == pytest.approx(0.5, abs=0.1)
    assert residual_shift(greys[0], greys[3], keep, np.zeros(2)) < 0.1


def test_an_unlike_background_frame_fails_the_mse_threshold(run):
    images, greys, masks = run
    darker = cv2.convertScaleAbs(images[0], alpha=0.85)
    miss = _pair(images + [darker], greys + [cv2.cvtColor(darker, cv2.COLOR_BGR2GRAY)], masks, [len(images)])
    assert isinstance(miss, Miss) and miss.reject.reason == "mse_above_threshold" and miss.mse > PARAMS.max_mse


def test_diverse_selection_keeps_the_best_distinct_pairs():
    def box(x):
        mask = np.zeros((50, 100), np.uint8)
        mask[10:30, x : x + 20] = 1
        return mask

    times = [i * 0.25 for i in range(12)]  # 4 samples per second
    masks = {i: box(8 * i) for i in range(12)}
    pairs = [Pair(i, 0, mse=float(i % 5), changed=1.0, shift=0.0) for i in range(12)]
    kept = select_diverse(pairs, masks, times, PairingParams(min_gap_seconds=1.0, max_mask_iou=0.5, max_pairs=3))
    assert [p.source for p in kept] == [0, 5, 10]  # the zero-MSE pairs, 1.25 s apart, boxes disjoint
    close_in_time = select_diverse(pairs, masks, times, PairingParams(min_gap_seconds=2.0, max_mask_iou=1.0))
    assert [p.source for p in close_in_time] == [0, 10]
    same_place = {i: box(40) for i in range(12)}
    assert len(select_diverse(pairs, same_place, times, PairingParams(min_gap_seconds=0.0))) == 1
