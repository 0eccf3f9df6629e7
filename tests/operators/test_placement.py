"""placement: the R1 ∩ R2 grid against a brute-force loop, the draw, the fallback scales and size matching."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from pairmine.operators.placement import (
    PlacementParams,
    choose_position,
    covered_fraction,
    feasible_positions,
    size_target,
)
from pairmine.operators.backgrounds import Instance

H, W = 240, 320


def brute_force(x: int, y: int, bw: int, bh: int, height: int, width: int, instances, p: PlacementParams):
    """R1 and R2 for one corner, written out from the rules in the module docstring; (ok, max overlap)."""
    inside = max(0, min(x + bw, width) - max(x, 0)) * max(0, min(y + bh, height) - max(y, 0))
    ok = inside >= p.min_inside_fraction * bw * bh - 1e-6
    cx, cy = x + bw / 2, y + bh / 2
    ok &= p.border_band * width <= cx <= width - p.border_band * width
    ok &= p.border_band * height <= cy <= height - p.border_band * height
    worst = 0.0
    for inst in instances:
        ix, iy, iw, ih = inst.box
        ox = max(0.0, min(x + bw, ix + iw) - max(x, ix))
        oy = max(0.0, min(y + bh, iy + ih) - max(y, iy))
        worst = max(worst, ox * oy / max(iw * ih, 1.0))
        if p.centre_outside_instances and ix <= cx <= ix + iw and iy <= cy <= iy + ih:
            ok = False
    if instances:
        ok &= worst <= p.max_instance_overlap
        if p.min_instance_overlap > 0:
            ok &= worst >= p.min_instance_overlap
    return bool(ok), worst


def random_instances(rng: np.random.Generator, n: int, height: int = H, width: int = W) -> list[Instance]:
    out = []
    for _ in range(n):
        w, h = rng.uniform(10, width / 3), rng.uniform(10, height / 3)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        out.append(Instance((x, y, w, h), w * h * 0.6, "thing"))
    return out


PARAM_CASES = {
    "defaults": {},
    "partial_inside": {"min_inside_fraction": 0.6, "border_band": 0.0},
    "lower_bound": {"min_instance_overlap": 0.05, "max_instance_overlap": 0.4},
    "centre_outside": {"centre_outside_instances": True, "border_band": 0.1},
    "tight_overlap": {"max_instance_overlap": 0.0, "border_band": 0.05},
    "coarse_grid": {"grid": 7, "min_inside_fraction": 0.3, "border_band": 0.0},
}


@pytest.mark.parametrize("case", sorted(PARAM_CASES))
def test_feasible_grid_equals_brute_force(case):
    p = PlacementParams(**PARAM_CASES[case])
    rng = np.random.default_rng(sorted(PARAM_CASES).index(case))
    for n_instances, (bw, bh) in [(0, (60, 40)), (3, (50, 70)), (6, (90, 30)), (2, (200, 150))]:
        instances = random_instances(rng, n_instances)
        xs, ys, ok, overlap = feasible_positions(bw, bh, H, W, instances, p)
        assert ok.shape == overlap.shape == (ys.size, xs.size)
        for r, y in enumerate(ys):
            for c, x in enumerate(xs):
                expected_ok, expected_overlap = brute_force(int(x), int(y), bw, bh, H, W, instances, p)
                assert ok[r, c] == expected_ok, (case, n_instances, x, y)
                if instances:
                    assert overlap[r, c] == pytest.approx(expected_overlap)


@pytest.mark.parametrize("f", [1.0, 0.6, 0.25])
def test_candidate_grid_spans_every_corner_that_r2_allows(f):
    """The grid runs from the leftmost to the rightmost corner keeping `f` of the box inside, evenly."""
    p = PlacementParams(min_inside_fraction=f, border_band=0.0, grid=16)
    bw, bh = 100, 80
    xs, ys, ok, _ = feasible_positions(bw, bh, H, W, [], p)
    for axis, box, size in ((xs, bw, W), (ys, bh, H)):
        legal = [v for v in range(-box, size + 1) if max(0, min(v + box, size) - max(v, 0)) >= f * box]
        assert axis.min() >= min(legal) - 1 and axis.max() <= max(legal)
        assert axis.min() <= min(legal) + 1 and axis.max() >= max(legal) - 1
        assert axis.size == 16 and (np.diff(axis) > 0).all()
    sticks_out = (xs[None, :] < 0) | (xs[None, :] + bw > W) | (ys[:, None] < 0) | (ys[:, None] + bh > H)
    assert ok[sticks_out].any() == (f < 1)  # partly outside boxes are feasible exactly when R2 allows them


def test_full_inside_and_box_larger_than_image_has_no_candidates():
    xs, ys, ok, overlap = feasible_positions(W + 1, 50, H, W, [], PlacementParams())
    assert xs.size == 0 and ok.size == 0 and overlap.size == 0


def check_placement(spot, instances, p: PlacementParams, height: int = H, width: int = W):
    """Every R1 / R2 rule, re-checked on the chosen box."""
    ok, worst = brute_force(spot.x, spot.y, spot.width, spot.height, height, width, instances, p)
    assert ok
    assert spot.max_overlap == pytest.approx(worst)


@pytest.mark.parametrize("case", sorted(PARAM_CASES))
def test_chosen_position_satisfies_r1_and_r2(case):
    p = PlacementParams(**PARAM_CASES[case])
    for seed in range(15):
        rng = np.random.default_rng(seed)
        instances = random_instances(rng, 4)
        spot = choose_position(70, 50, H, W, instances, p, rng)
        if spot is None:
            xs, ys, ok, _ = feasible_positions(70, 50, H, W, instances, p)
            assert not ok.any()
            continue
        check_placement(spot, instances, p)
        if p.min_instance_overlap > 0:
            assert spot.max_overlap >= p.min_instance_overlap


def test_chosen_positions_vary_with_the_seed_and_repeat_with_it():
    p = PlacementParams()
    instances = random_instances(np.random.default_rng(0), 3)
    picks = [choose_position(60, 40, H, W, instances, p, np.random.default_rng(s)) for s in range(20)]
    again = [choose_position(60, 40, H, W, instances, p, np.random.default_rng(s)) for s in range(20)]
    assert picks == again
    assert len({(s.x, s.y) for s in picks}) > 5


def test_candidates_counts_the_feasible_cells():
    p = PlacementParams()
    instances = random_instances(np.random.default_rng(1), 3)
    spot = choose_position(60, 40, H, W, instances, p, np.random.default_rng(0))
    assert spot.candidates == int(feasible_positions(60, 40, H, W, instances, p)[2].sum())


def test_falls_back_to_a_smaller_scale_when_the_box_does_not_fit():
    p = PlacementParams(border_band=0.0)
    spot = choose_position(400, 300, H, W, [], p, np.random.default_rng(0))  # too big at scale 1
    assert spot.scale == 0.5 and (spot.width, spot.height) == (200, 150)
    check_placement(spot, [], p)


def test_fallback_scales_are_tried_in_order():
    p = PlacementParams(border_band=0.0, scales=(1.0, 0.25, 0.5))
    spot = choose_position(400, 300, H, W, [], p, np.random.default_rng(0))
    assert spot.scale == 0.25 and (spot.width, spot.height) == (100, 75)


def test_min_scale_skips_fallbacks_that_are_too_small():
    p = PlacementParams(border_band=0.0)
    box = (900, 700)  # fits only at 1/3 and below
    assert choose_position(*box, H, W, [], p, np.random.default_rng(0)).scale == pytest.approx(1 / 3)
    assert choose_position(*box, H, W, [], p, np.random.default_rng(0), min_scale=0.4) is None


def test_first_scale_is_tried_even_below_min_scale():
    p = PlacementParams(border_band=0.0, scales=(0.5, 0.25))
    spot = choose_position(100, 100, H, W, [], p, np.random.default_rng(0), min_scale=0.9)
    assert spot is not None and spot.scale == 0.5


def test_none_when_every_centre_falls_inside_an_instance():
    """An instance covering the whole admissible centre region (inside the border band) leaves no room."""
    p = PlacementParams(border_band=0.2, max_instance_overlap=1.0, centre_outside_instances=True)
    blocker = [Instance((0.2 * W, 0.2 * H, 0.6 * W, 0.6 * H), 1000.0)]
    for box in ((80, 60), (10, 10), (2, 2)):
        assert choose_position(*box, H, W, blocker, p, np.random.default_rng(0)) is None


def test_max_overlap_bound_excludes_burying_an_instance():
    p = PlacementParams(border_band=0.0, centre_outside_instances=False, max_instance_overlap=0.3)
    instance = Instance((100.0, 80.0, 60.0, 60.0), 3000.0)
    xs, ys, ok, overlap = feasible_positions(120, 120, H, W, [instance], p)
    covering = (xs[None, :] <= 100) & (xs[None, :] + 120 >= 160) & (ys[:, None] <= 80) & (ys[:, None] + 120 >= 140)
    assert covering.any() and not ok[covering].any()  # boxes that swallow the instance are never chosen
    assert (overlap[covering] == 1.0).all()


@pytest.mark.parametrize(
    "values",
    [
        {"scales": ()},
        {"scales": (1.0, 0.0)},
        {"scales": (1.5,)},
        {"min_paste_area_ratio": 0.6, "max_paste_area_ratio": 0.5},
        {"min_instance_overlap": 0.6, "max_instance_overlap": 0.5},
        {"border_band": 0.5},
        {"min_inside_fraction": 0.0},
        {"grid": 1},
    ],
)
def test_placement_params_are_validated(values):
    with pytest.raises(ValidationError):
        PlacementParams(**values)


# --- size matching ---------------------------------------------------------------------------------

NO_LIMITS = PlacementParams(size_jitter=0.0, min_paste_area_ratio=0.0, max_paste_area_ratio=1.0)


def test_covered_fraction_of_cell_aligned_boxes_is_exact():
    h, w = 256, 512  # 2 x 4 px per grid cell
    boxes = [Instance((0, 0, 256, 128), 1.0), Instance((128, 64, 256, 128), 1.0)]  # overlap 128 x 64
    union = 256 * 128 * 2 - 128 * 64
    assert covered_fraction(boxes, h, w) == pytest.approx(union / (h * w))
    assert covered_fraction([], h, w) == 0.0


def test_covered_fraction_never_underestimates():
    rng = np.random.default_rng(3)
    for _ in range(20):
        instances = random_instances(rng, 5)
        grid = np.zeros((H, W), bool)
        for i in instances:
            x, y, w, h = i.box
            grid[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = True
        exact = grid.mean()
        assert exact - 1e-9 <= covered_fraction(instances, H, W) <= exact + 0.06


def test_size_target_same_category_uses_those_instances():
    instances = [Instance((0, 0, 10, 10), 500.0, "cat"), Instance((50, 50, 10, 10), 900.0, "dog"), Instance((90, 90, 10, 10), 700.0, "dog")]
    seen = set()
    for seed in range(20):
        area, rule = size_target(0.3, "dog", instances, H, W, NO_LIMITS, np.random.default_rng(seed))
        assert rule == "same_category"
        seen.add(area)
    assert seen == {900.0, 700.0}


@pytest.mark.parametrize("category", ["bird", None])
def test_size_target_falls_back_to_any_instance(category):
    instances = [Instance((0, 0, 10, 10), 500.0, "cat"), Instance((50, 50, 10, 10), 900.0, None)]
    seen = set()
    for seed in range(20):
        area, rule = size_target(0.3, category, instances, H, W, NO_LIMITS, np.random.default_rng(seed))
        assert rule == "background_instances"
        seen.add(area)
    assert seen == {500.0, 900.0}


def test_size_target_draws_only_instances_a_paste_could_match():
    """Class-agnostic masks are mostly parts smaller than the floor; drawn among them, pastes piled up there."""
    p = PlacementParams(size_jitter=0.0, min_paste_area_ratio=0.05, max_paste_area_ratio=1.0)
    floor = 0.05 * H * W
    parts = [Instance((0, 0, 5, 5), 0.2 * floor, None) for _ in range(20)]
    big = Instance((50, 50, 30, 30), 2 * floor, None)
    for seed in range(20):
        assert size_target(0.3, None, [*parts, big], H, W, p, np.random.default_rng(seed)) == (2 * floor, "background_instances")
    area, rule = size_target(0.3, None, parts, H, W, p, np.random.default_rng(0))
    assert rule == "source_scale" and area == pytest.approx(0.3 * H * W)  # no instance of a pasteable size


def test_size_target_without_instances_keeps_the_source_share():
    area, rule = size_target(0.2, "dog", [], H, W, NO_LIMITS, np.random.default_rng(0))
    assert rule == "source_scale" and area == pytest.approx(0.2 * H * W)


def test_size_target_jitter_stays_in_its_band():
    p = PlacementParams(size_jitter=0.2, min_paste_area_ratio=0.0, max_paste_area_ratio=1.0)
    areas = [size_target(0.2, None, [], H, W, p, np.random.default_rng(s))[0] / (0.2 * H * W) for s in range(200)]
    assert 0.8 <= min(areas) < 0.85 and 1.15 < max(areas) <= 1.2


def test_size_target_floor():
    p = PlacementParams(size_jitter=0.0, min_paste_area_ratio=0.05)
    area, rule = size_target(0.001, None, [], H, W, p, np.random.default_rng(0))
    assert rule == "source_scale" and area == pytest.approx(0.05 * H * W)


def test_size_target_cap_is_max_ratio_without_instances():
    p = PlacementParams(size_jitter=0.0, min_paste_area_ratio=0.0, max_paste_area_ratio=0.3)
    assert size_target(0.9, None, [], H, W, p, np.random.default_rng(0))[0] == pytest.approx(0.3 * H * W)


def test_size_target_cap_is_half_the_free_area():
    h, w = 256, 512
    left_half = [Instance((0, 0, 256, 256), 60000.0, "wall")]  # covers exactly half the image
    p = PlacementParams(size_jitter=0.0, min_paste_area_ratio=0.0, max_paste_area_ratio=0.5)
    area, rule = size_target(0.1, "wall", left_half, h, w, p, np.random.default_rng(0))
    assert rule == "same_category" and area == pytest.approx(0.25 * h * w)  # min(0.5, (1 - 0.5) / 2)


def test_size_target_floor_wins_over_cap():
    h, w = 256, 512
    everywhere = [Instance((0, 0, 512, 256), 100.0)]
    p = PlacementParams(size_jitter=0.0, min_paste_area_ratio=0.05)
    assert size_target(0.1, None, everywhere, h, w, p, np.random.default_rng(0))[0] == pytest.approx(0.05 * h * w)
