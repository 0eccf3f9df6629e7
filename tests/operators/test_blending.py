"""blending: the feathered alpha (0 outside, 255 deep inside, a ramp at the outline) and the paste."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage

from pairmine.operators.blending import BlendParams, feather_alpha, feather_px, paste


def disk_mask(size: int = 81, radius: int = 30) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), radius, 1, -1)
    return mask


def edt_inside(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of each mask pixel to the nearest non-mask pixel, crop edge included."""
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


@pytest.mark.parametrize("area, ratio, expected", [(10000, 0.01, 1.0), (1_000_000, 0.01, 10.0), (40000, 0.05, 10.0), (4, 0.01, 1.0), (10000, 0.0, 0.0)])
def test_feather_px_is_ratio_times_sqrt_area_at_least_one(area, ratio, expected):
    assert feather_px(area, BlendParams(feather_ratio=ratio)) == pytest.approx(expected)


@pytest.mark.parametrize("width_px", [1.0, 4.0, 7.5])
def test_feather_alpha_zero_outside_full_inside_ramp_at_outline(width_px):
    mask = disk_mask()
    alpha = feather_alpha(mask, width_px)
    distance = edt_inside(mask)
    assert alpha.dtype == np.uint8 and alpha.shape == mask.shape
    assert (alpha[mask == 0] == 0).all()
    assert (alpha[mask == 1] > 0).all()  # every object pixel is pasted, so the mask covers the change
    deep = distance >= 1.1 * width_px + 1  # OpenCV's 3x3 L2 metric is within a few % of the exact one
    assert deep.any() and (alpha[deep] == 255).all()
    outline = (mask == 1) & (distance == 1)
    expected = np.clip(255.0 / width_px, 0, 255)
    assert np.abs(alpha[outline].astype(float) - expected).max() <= 0.1 * expected + 1
    if width_px > 1:
        assert (alpha[outline] < 255).all()


def test_feather_alpha_grows_monotonically_towards_the_inside():
    mask = disk_mask(101, 45)
    alpha = feather_alpha(mask, 8.0).astype(int)
    row = alpha[50, :51]  # from the left edge to the centre
    assert (np.diff(row) >= 0).all() and row[0] == 0 and row[-1] == 255
    assert len(set(row[(row > 0) & (row < 255)])) >= 5  # a real ramp, not a step


def test_a_feather_wider_than_the_object_still_covers_every_mask_pixel():
    mask = disk_mask()
    alpha = feather_alpha(mask, 1000.0)
    assert np.array_equal(alpha > 0, mask == 1)


def test_feather_alpha_treats_the_crop_edge_as_an_outline():
    alpha = feather_alpha(np.ones((20, 30), np.uint8), 5.0)
    assert (alpha[0] < 255).all() and (alpha[:, -1] < 255).all() and alpha[10, 15] == 255


def test_zero_feather_is_a_hard_edge():
    mask = disk_mask()
    np.testing.assert_array_equal(feather_alpha(mask, 0.0), mask * 255)


def scene(seed: int = 0):
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    entity = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    alpha = feather_alpha(np.pad(np.ones((14, 24), np.uint8), 3), 3.0)
    return background, entity, alpha


def reference_blend(bg: np.ndarray, fg: np.ndarray, a: np.ndarray) -> np.ndarray:
    a = a[..., None] / 255.0
    return a * fg + (1 - a) * bg


@pytest.mark.parametrize("x, y", [(10, 15), (0, 0), (-7, -5), (65, 50), (-12, 45), (60, -15), (50, 40)])
def test_paste_blends_inside_and_leaves_everything_else_untouched(x, y):
    background, entity, alpha = scene()
    before = background.copy()
    source, full_alpha = paste(background, entity, alpha, x, y)
    np.testing.assert_array_equal(background, before)  # the input is not modified
    assert source.shape == background.shape and full_alpha.shape == background.shape[:2]
    # the full-size alpha is the entity's alpha shifted to (x, y) and clipped to the image
    expected_alpha = np.zeros(background.shape[:2], np.uint8)
    ys, xs = np.mgrid[0 : alpha.shape[0], 0 : alpha.shape[1]]
    keep = (ys + y >= 0) & (ys + y < 60) & (xs + x >= 0) & (xs + x < 80)
    expected_alpha[ys[keep] + y, xs[keep] + x] = alpha[keep]
    np.testing.assert_array_equal(full_alpha, expected_alpha)
    outside = full_alpha == 0
    np.testing.assert_array_equal(source[outside], background[outside])
    expected_fg = np.zeros_like(background)
    expected_fg[ys[keep] + y, xs[keep] + x] = entity[keep]
    blended = reference_blend(background.astype(float), expected_fg.astype(float), full_alpha.astype(float))
    inside = ~outside
    assert np.abs(source[inside] - blended[inside]).max() <= 0.5 + 1e-9  # rounded to nearest
    opaque = full_alpha == 255
    np.testing.assert_array_equal(source[opaque], expected_fg[opaque])


@pytest.mark.parametrize("x, y", [(80, 0), (0, 60), (-30, 0), (0, -20), (100, 100)])
def test_paste_entirely_outside_is_an_error(x, y):
    background, entity, alpha = scene()
    with pytest.raises(ValueError):
        paste(background, entity, alpha, x, y)
