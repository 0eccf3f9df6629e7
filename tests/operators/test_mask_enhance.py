"""mask_enhance: every covering mode covers the object, area targets, shape gating, and the fallback."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from pairmine.operators.mask_enhance import MODES, MaskEnhanceParams, allowed_modes, enhance_mask, random_enhance

H, W = 200, 240
COVERING = ("exact", "dilate", "hull", "ellipse", "bbox", "brush")


def disk(cx=120, cy=100, r=30) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, (cx, cy), r, 1, -1)
    return mask


def l_shape() -> np.ndarray:
    """A 60x60 square minus a 30x30 corner: area 2700, hull 3600 - 450 = 3150, solidity 0.857."""
    mask = np.zeros((H, W), np.uint8)
    mask[60:120, 80:140] = 1
    mask[60:90, 110:140] = 0
    return mask


def ring() -> np.ndarray:
    """A thin annulus: solidity ~0.2, far below the hull modes' 0.6."""
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, (120, 100), 50, 1, 4)
    return mask


def diagonal() -> np.ndarray:
    """A thin diagonal bar: fills ~5 % of its box, far below the bbox mode's 0.5."""
    mask = np.zeros((H, W), np.uint8)
    cv2.line(mask, (40, 40), (180, 160), 1, 5)
    return mask


def blob_pair() -> np.ndarray:
    mask = disk(80, 100, 25)
    cv2.circle(mask, (170, 90), 20, 1, -1)
    return mask


SHAPES = {"disk": disk, "l_shape": l_shape, "ring": ring, "diagonal": diagonal, "blob_pair": blob_pair}


@pytest.mark.parametrize("mode", COVERING)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_covering_modes_cover_the_object(mode, shape):
    mask = SHAPES[shape]()
    for seed in range(4):
        out = enhance_mask(mask, mode, np.random.default_rng(seed))
        assert out.shape == mask.shape and out.dtype == np.uint8
        assert set(np.unique(out)) <= {0, 1}
        assert (out[mask == 1] == 1).all(), f"{mode} uncovered object pixels on {shape}"
        if mode != "exact":
            assert out.sum() > mask.sum()  # a looser mask, as a user would draw it


def area_ratio(shape: str, mode: str, seed: int) -> float:
    mask = SHAPES[shape]()
    return enhance_mask(mask, mode, np.random.default_rng(seed)).sum() / mask.sum()


def outline_pixels(mask: np.ndarray) -> int:
    """Pixels of the mask with an 8-neighbour outside it (the image edge counts as outside)."""
    padded = np.pad(mask, 1)
    return int((padded & (1 - cv2.erode(padded, np.ones((3, 3), np.uint8))))[1:-1, 1:-1].sum())


# Pixel distances come in discrete levels, so a whole ring of equally distant pixels is taken or left:
# the area reaches its target and overshoots by at most that outermost (innermost, for erode) ring.


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_erode_shrinks_inside_the_object_to_80_90_percent(shape):
    mask = SHAPES[shape]()
    area = mask.sum()
    for seed in range(8):
        out = enhance_mask(mask, "erode", np.random.default_rng(seed))
        assert (out[mask == 0] == 0).all()  # only removes pixels
        assert out.sum() >= int(0.80 * area)
        assert out.sum() - outline_pixels(out) <= 0.90 * area
        if shape in ("disk", "l_shape", "blob_pair"):  # compact: one ring is a few % of the area
            assert out.sum() / area <= 0.93


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_dilate_grows_to_125_150_percent(shape):
    mask = SHAPES[shape]()
    area = mask.sum()
    for seed in range(8):
        out = enhance_mask(mask, "dilate", np.random.default_rng(seed))
        assert out.sum() >= 1.25 * area
        assert out.sum() - outline_pixels(out) <= 1.50 * area
        if shape in ("disk", "l_shape", "blob_pair"):
            assert out.sum() / area <= 1.6


def test_erode_keeps_the_core_and_dilate_a_band():
    """Isotropic: erosion removes an outer ring, dilation adds one (distance thresholds, not random pixels)."""
    mask = disk(r=40)
    eroded = enhance_mask(mask, "erode", np.random.default_rng(0))
    dilated = enhance_mask(mask, "dilate", np.random.default_rng(0))
    ys, xs = np.nonzero(eroded)
    radius_in = np.hypot(xs - 120, ys - 100).max()
    ys, xs = np.nonzero(dilated)
    radius_out = np.hypot(xs - 120, ys - 100).max()
    assert np.sqrt(0.8) * 40 - 2 <= radius_in <= np.sqrt(0.9) * 40 + 2
    assert np.sqrt(1.25) * 40 - 2 <= radius_out <= np.sqrt(1.5) * 40 + 2


def test_ellipse_and_bbox_areas():
    for seed in range(5):
        assert 2.0 <= area_ratio("disk", "ellipse", seed) <= 3.0  # dilated to 200-250 %, then an ellipse around it
        assert 1.10 <= area_ratio("l_shape", "bbox", seed) / (3600 / 2700) <= 1.6  # 110-120 % box, edges bulge


def test_enhancement_is_deterministic_per_rng():
    mask = l_shape()
    for mode in MODES:
        a = enhance_mask(mask, mode, np.random.default_rng(5))
        b = enhance_mask(mask, mode, np.random.default_rng(5))
        np.testing.assert_array_equal(a, b)


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError):
        enhance_mask(disk(), "blur", np.random.default_rng(0))


@pytest.mark.parametrize(
    "shape, mode, allowed",
    [
        ("disk", "bbox", True),  # compact: fills pi/4 of its box
        ("diagonal", "bbox", False),  # thin: fills little of its box
        ("disk", "ellipse", True),
        ("disk", "hull", False),  # already convex: hull would equal dilate
        ("l_shape", "hull", True),  # solidity 0.857
        ("l_shape", "ellipse", True),
        ("ring", "hull", False),  # solidity ~0.2
        ("ring", "ellipse", False),
        ("disk", "dilate", True),
        ("ring", "brush", True),
    ],
)
def test_allowed_modes_gate_by_shape(shape, mode, allowed):
    assert (mode in allowed_modes(SHAPES[shape](), (mode,))) == allowed


def test_box_and_hull_modes_are_refused_for_huge_masks():
    huge = np.zeros((H, W), np.uint8)
    huge[10:190, 10:230] = 1  # box covers 82 % of the image
    huge[10:100, 120:230] = 0  # non-convex (L), so only the size rule refuses the hull modes
    assert allowed_modes(huge, ("bbox", "hull", "ellipse", "dilate")) == ["dilate"]


def test_allowed_modes_fall_back_to_exact():
    assert allowed_modes(diagonal(), ("bbox",)) == ["exact"]
    assert allowed_modes(ring(), ("hull", "ellipse")) == ["exact"]


def test_random_enhance_uses_only_allowed_modes_and_reports_them():
    params = MaskEnhanceParams(modes=("dilate", "hull", "bbox"))
    mask = disk()  # hull refused (convex)
    seen = set()
    for seed in range(30):
        out, mode = random_enhance(mask, params, np.random.default_rng(seed))
        seen.add(mode)
        assert (out[mask == 1] == 1).all()
    assert seen == {"dilate", "bbox"}


def test_random_enhance_falls_back_to_exact_above_max_area_ratio():
    big = np.zeros((H, W), np.uint8)
    big[20:180, 24:216] = 1  # 64 % of the image; any dilation passes 70 %
    out, mode = random_enhance(big, MaskEnhanceParams(modes=("dilate",), max_area_ratio=0.7), np.random.default_rng(0))
    assert mode == "exact"
    np.testing.assert_array_equal(out, big)
    out, mode = random_enhance(big, MaskEnhanceParams(modes=("dilate",), max_area_ratio=1.0), np.random.default_rng(0))
    assert mode == "dilate" and out.sum() > big.sum()


def test_exact_only_returns_the_mask():
    mask = disk()
    out, mode = random_enhance(mask, MaskEnhanceParams(), np.random.default_rng(0))
    assert mode == "exact"
    np.testing.assert_array_equal(out, mask)


@pytest.mark.parametrize("modes", [(), ("blur",), ("dilate", "Dilate"), ("exact", "hull", "sketch")])
def test_params_reject_unknown_or_no_modes(modes):
    with pytest.raises(ValidationError):
        MaskEnhanceParams(modes=modes)


@pytest.mark.parametrize("ratio", [0.0, 1.5])
def test_params_reject_bad_max_area_ratio(ratio):
    with pytest.raises(ValidationError):
        MaskEnhanceParams(max_area_ratio=ratio)


def test_params_accept_every_known_mode():
    assert MaskEnhanceParams(modes=MODES).modes == MODES
