"""blending: the feathered alpha (0 outside, 255 deep inside, a ramp at the outline) and the paste."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.sparse.linalg
from scipy import ndimage

from pairmine.operators import blending
from pairmine.operators.blending import BlendParams, _matting_system, _solve_banded, _symmetric, entity_alpha, feather_alpha, edge_px, matte_alpha, paste, place


def disk_mask(size: int = 81, radius: int = 30) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), radius, 1, -1)
    return mask


def edt_inside(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of each mask pixel to the nearest non-mask pixel, crop edge included."""
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


@pytest.mark.parametrize("area, ratio, expected", [(10000, 0.01, 1.0), (1_000_000, 0.01, 10.0), (40000, 0.05, 10.0), (4, 0.01, 1.0), (10000, 0.0, 0.0)])
def test_feather_edge_px_is_ratio_times_sqrt_area_at_least_one(area, ratio, expected):
    assert edge_px(area, BlendParams(method="feather", feather_ratio=ratio)) == pytest.approx(expected)


@pytest.mark.parametrize("area, ratio, expected", [(10000, 0.04, 4.0), (1_000_000, 0.04, 40.0), (100, 0.04, 2.0)])
def test_matting_band_is_ratio_times_sqrt_area_at_least_two(area, ratio, expected):
    assert edge_px(area, BlendParams(method="matting", matting_band_ratio=ratio)) == pytest.approx(expected)


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


def soft_disk_scene(size: int = 160, radius: float = 50.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red disk with a soft 4-px edge (defocus, hair) on a blue-green background: (BGR image, true alpha
    0-1, a coarse 0/1 mask over it: the disk at 1/16 resolution, blown up blocky, as coarse annotations are)."""
    yy, xx = np.mgrid[:size, :size]
    truth = np.clip((radius - np.hypot(yy - size / 2, xx - size / 2)) / 4 + 0.5, 0, 1)
    fg, bg = np.array([40, 40, 220.0]), np.array([200, 160, 30.0])
    rng = np.random.default_rng(0)
    image = truth[..., None] * fg + (1 - truth[..., None]) * bg + rng.normal(0, 3, (size, size, 3))
    coarse = cv2.resize(cv2.resize(truth, (size // 16, size // 16), interpolation=cv2.INTER_AREA), (size, size), interpolation=cv2.INTER_NEAREST)
    mask = cv2.dilate((coarse > 0.05).astype(np.uint8), np.ones((9, 9), np.uint8))  # covers the whole disk
    return np.clip(image, 0, 255).astype(np.uint8), truth, mask


def hard_steps(alpha: np.ndarray) -> int:
    """Neighbouring pixel pairs whose alpha jumps by more than 100 of 255: stair steps of a blocky edge."""
    a = alpha.astype(int)
    return int((np.abs(np.diff(a, axis=0)) > 100).sum() + (np.abs(np.diff(a, axis=1)) > 100).sum())


def test_matting_follows_the_object_not_the_blocky_mask():
    image, truth, mask = soft_disk_scene()
    width_px = edge_px(mask.sum(), BlendParams(method="feather"))
    feathered, matted = feather_alpha(mask, width_px), matte_alpha(image, mask, 18.0)
    assert (matted[mask == 0] == 0).all()  # never outside the mask: source == target there
    assert hard_steps(matted) < hard_steps(feathered) / 4
    error = lambda alpha: np.abs(alpha / 255.0 - truth).mean()  # noqa: E731
    assert error(matted) < error(feathered) / 3


def test_matting_keeps_every_changed_pixel_inside_the_mask():
    image, _, mask = soft_disk_scene()
    background = np.full((240, 260, 3), 90, np.uint8)
    for x, y in [(40, 30), (-20, 100), (150, -40)]:  # inside, and clipped by the image edges
        alpha = entity_alpha(image, mask, 6.0, BlendParams(method="matting"))
        source, full_alpha = paste(background, image, alpha, x, y)
        placed = place(mask, x, y, *background.shape[:2])
        assert not (source != background).any(axis=2)[placed == 0].any()
        assert not full_alpha[placed == 0].any()


def test_matting_without_an_unknown_band_is_the_mask():
    mask = np.zeros((30, 40), np.uint8)
    mask[10:20, 10:30] = 1
    image = np.full((30, 40, 3), 128, np.uint8)
    alpha = matte_alpha(image, mask, 1.0)  # a 1-px band on a flat image: nothing to follow
    assert (alpha[mask == 0] == 0).all() and alpha[12:18, 12:28].min() == 255


def test_large_crops_are_matted_at_a_bounded_size_with_the_same_result():
    image, truth, mask = soft_disk_scene()
    big = (480, 480)
    image, truth = cv2.resize(image, big, interpolation=cv2.INTER_CUBIC), cv2.resize(truth, big)
    mask = cv2.resize(mask, big, interpolation=cv2.INTER_NEAREST)
    full, bounded = matte_alpha(image, mask, 54.0, max_side=4096), matte_alpha(image, mask, 54.0, max_side=160)
    assert (bounded[mask == 0] == 0).all()
    assert np.abs(bounded / 255.0 - truth).mean() < 0.03 and np.abs(full / 255.0 - truth).mean() < 0.03


def reference_laplacian(image: np.ndarray, epsilon: float) -> np.ndarray:
    """The dense matting Laplacian by Levin et al.'s definition, window by window (3x3 windows inside the image)."""
    h, w = image.shape[:2]
    laplacian = np.zeros((h * w, h * w))
    for y in range(1, h - 1):
        for x in range(1, w - 1):
            pixels = [(y + dy) * w + (x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            window = image.reshape(-1, 3)[pixels]
            centred = window - window.mean(axis=0)
            inverse = np.linalg.inv(centred.T @ centred / 9 + epsilon / 9 * np.eye(3))
            laplacian[np.ix_(pixels, pixels)] += np.eye(9) - (1 + centred @ inverse @ centred.T) / 9
    return laplacian


def test_the_matting_system_is_levins_laplacian_on_the_unknown_pixels():
    rng = np.random.default_rng(3)
    image = rng.random((14, 17, 3))
    image[:, :8] = image[:, :8] * 0.02 + 0.5  # a nearly flat half: ill-conditioned windows
    image[:7, 8:] = np.where(np.arange(9) < 4, 0.2, 0.8)[None, :, None] * [1.0, 0.5, 0.25]  # two flat colours: rank-1 windows
    image[7:, 8:] = rng.random((7, 9, 1))  # grey: rank-1 too
    unknown = np.zeros((14, 17), bool)
    unknown[3:11, 4:13] = True
    unknown[6:8, 7:10] = False  # a hole of known pixels inside the band
    alpha = rng.random((14, 17)) * ~unknown
    upper, rhs = _matting_system(image, unknown, alpha, 1e-7)
    laplacian, u, k = reference_laplacian(image, 1e-7), np.flatnonzero(unknown), np.flatnonzero(~unknown)
    expected = laplacian[np.ix_(u, u)]
    scale = np.abs(expected).max()
    assert not scipy.sparse.tril(upper, -1).nnz  # each symmetric pair once
    assert np.abs(_symmetric(upper).toarray() - expected).max() < 1e-7 * scale
    assert np.abs(rhs + laplacian[np.ix_(u, k)] @ alpha.ravel()[k]).max() < 1e-7 * scale


def test_the_banded_solve_is_exact_and_conjugate_gradients_take_over_beyond_its_bandwidth(monkeypatch):
    image, _, mask = soft_disk_scene()
    captured = []
    monkeypatch.setattr(blending, "_matting_system", lambda *args: captured.append(_matting_system(*args)) or captured[-1])
    banded = matte_alpha(image, mask, 18.0)
    upper, rhs = captured[0]
    assert np.abs(_solve_banded(upper, rhs) - scipy.sparse.linalg.spsolve(_symmetric(upper).tocsc(), rhs)).max() < 1e-6
    monkeypatch.setattr(blending, "_MAX_BANDWIDTH", 0)
    assert _solve_banded(upper, rhs) is None
    assert np.abs(matte_alpha(image, mask, 18.0).astype(int) - banded).max() <= 1  # CG: within one level
