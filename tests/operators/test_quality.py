"""quality: signals that tell a deliberately bad pair from a good one, and thresholds that reject with a reason."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sample_inputs import TESTDATA

from pairmine.operators.blending import feather_alpha
from pairmine.operators.quality import (
    FrameQualityParams, PasteQualityParams, bounding_window, frame_signals, paste_signals, perceptual_hash, quality_reject,
)

H, W = 240, 320


def scene(seed: int = 0) -> np.ndarray:
    """A smooth, textured photo-like image (BGR)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base = np.stack([90 + 40 * np.sin(xx / 37), 110 + 30 * np.cos(yy / 29), 100 + 25 * np.sin((xx + yy) / 53)], -1)
    return np.clip(base + rng.normal(0, 6, (H, W, 3)), 0, 255).astype(np.uint8)


def pasted(background: np.ndarray, patch: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float32) / 255
    return (patch * a + background * (1 - a)).round().astype(np.uint8)


@pytest.fixture
def shape() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    cv2.ellipse(mask, (160, 120), (60, 45), 0, 0, 360, 1, -1)
    return mask


def test_a_hard_edged_colour_shifted_patch_scores_worse_than_a_blended_one(shape):
    background = scene()
    good = pasted(background, scene(1), feather_alpha(shape, 3.0))  # the same kind of texture, feathered
    hard = shape * np.uint8(255)
    bad = pasted(background, np.full_like(background, (30, 30, 230)), hard)  # a flat red patch, hard edge
    good_signals, bad_signals = paste_signals(good, feather_alpha(shape, 3.0)), paste_signals(bad, hard)
    assert bad_signals["seam"] > 2 * good_signals["seam"]
    assert bad_signals["colour_delta"] > 4 * good_signals["colour_delta"] + 10
    assert bad_signals["luminance_delta"] > good_signals["luminance_delta"]
    limits = PasteQualityParams(max_seam=(good_signals["seam"] + bad_signals["seam"]) / 2, max_colour_delta=20)
    assert quality_reject(good_signals, limits) is None
    why = quality_reject(bad_signals, limits)
    assert why.reason == "quality_seam" and "seam" in why.detail
    assert quality_reject(bad_signals, PasteQualityParams()) is None  # no thresholds: recorded only


def test_frame_signals_see_exposure_blur_and_residual(shape):
    frame = scene()
    same = frame_signals(frame, frame.copy(), shape)
    assert same == {"residual": 0.0, "exposure_delta": 0.0, "sharpness_ratio": 1.0}
    brighter = frame_signals(frame, cv2.convertScaleAbs(frame, alpha=1.0, beta=30), shape)
    assert 25 < brighter["exposure_delta"] <= 30 and brighter["residual"] >= brighter["exposure_delta"]
    blurred = frame_signals(frame, cv2.GaussianBlur(frame, (9, 9), 3), shape)
    assert blurred["sharpness_ratio"] < 0.3 and blurred["exposure_delta"] < 1
    moved_inside = frame.copy()
    moved_inside[shape > 0] = 0  # a difference under the mask is the object, not a residual
    assert frame_signals(frame, moved_inside, shape)["residual"] == 0.0
    why = quality_reject(blurred, FrameQualityParams(min_sharpness_ratio=0.5))
    assert why.reason == "quality_sharpness_ratio"


def test_perceptual_hash_is_the_same_for_an_object_at_other_scales_and_differs_between_objects():
    photos = sorted((TESTDATA / "photos").glob("*.png"))
    hashes = []
    for path in photos:
        image = cv2.imread(str(path))
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.ellipse(mask, (image.shape[1] // 2, image.shape[0] // 2), (image.shape[1] // 3, image.shape[0] // 3), 0, 0, 360, 1, -1)
        base = int(perceptual_hash(image, mask), 16)
        for scale in (0.5, 0.8):
            size = (int(image.shape[1] * scale), int(image.shape[0] * scale))
            small = cv2.imdecode(cv2.imencode(".jpg", cv2.resize(image, size, interpolation=cv2.INTER_AREA))[1], cv2.IMREAD_COLOR)
            other = int(perceptual_hash(small, cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)), 16)
            assert bin(base ^ other).count("1") <= 4  # near, and mostly equal: the same bucket
        hashes.append(base)
    distances = [bin(a ^ b).count("1") for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    assert min(distances) >= 12  # other objects are far apart
    assert perceptual_hash(image, np.zeros_like(mask)) == "0" * 16


@pytest.mark.parametrize("dtype, on", [(np.uint8, 1), (np.uint8, 255), (bool, True), (np.int32, 7)])
@pytest.mark.parametrize("margin", [0, 3, 50])
def test_bounding_window_is_the_box_of_the_nonzero_pixels_grown_and_clipped(dtype, on, margin):
    rng = np.random.default_rng(margin)
    for _ in range(20):
        mask = np.zeros((H, W), dtype)
        for _ in range(int(rng.integers(1, 4))):
            y, x = int(rng.integers(0, H)), int(rng.integers(0, W))
            mask[y:y + int(rng.integers(1, 40)), x:x + int(rng.integers(1, 40))] = on
        ys, xs = np.nonzero(mask)
        wide = np.zeros((H, 2 * W), dtype)
        wide[:, ::2] = mask
        rows, cols = bounding_window(wide[:, ::2], margin)  # a strided view, as crops of a frame are
        assert (rows.start, rows.stop) == (max(0, ys.min() - margin), ys.max() + 1 + margin)
        assert (cols.start, cols.stop) == (max(0, xs.min() - margin), xs.max() + 1 + margin)
    assert bounding_window(np.zeros((H, W), dtype), margin) is None
