"""backgrounds: which images may receive a paste, their instances, and resizing them consistently."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from pairmine.operators.annotations import Segment
from pairmine.operators.backgrounds import (
    Background,
    BackgroundParams,
    background_reject,
    instances_of,
    resize_background,
)
from pairmine.operators.backgrounds import Instance

PARAMS = BackgroundParams()  # short side >= 256, aspect <= 3, instances: area >= 0.001, box < 0.4


@pytest.mark.parametrize(
    "height, width, reason",
    [
        (256, 256, None),
        (255, 1000, "background_too_small"),
        (1000, 255, "background_too_small"),
        (300, 900, None),  # aspect exactly 3
        (300, 901, "background_aspect"),
        (901, 300, "background_aspect"),
    ],
)
def test_background_reject(height, width, reason):
    result = background_reject(height, width, PARAMS)
    assert (result.reason if result else None) == reason


@pytest.mark.parametrize(
    "values", [{"min_instance_area_ratio": 0.5, "max_instance_area_ratio": 0.5}, {"max_aspect_ratio": 0.5}, {"resize_short_side": 10}]
)
def test_background_params_are_validated(values):
    with pytest.raises(ValidationError):
        BackgroundParams(**values)


def seg(box, area, thing=True, category=None) -> Segment:
    return Segment(index=0, box=box, area=area, thing=thing, category=category)


def test_instances_are_things_that_are_neither_tiny_nor_stuff_sized():
    h, w = 100, 200  # image area 20000: tiny below 20 px, stuff from a box of 8000 px
    segments = {
        "kept": seg((10, 10, 20, 20), 300, category="dog"),
        "stuff_class": seg((10, 10, 20, 20), 300, thing=False, category="sky"),
        "tiny": seg((10, 10, 5, 5), 19),
        "at_min_area": seg((10, 10, 5, 5), 20),
        "box_at_stuff_size": seg((0, 0, 100, 80), 3000),
        "box_just_below": seg((0, 0, 100, 79.9), 3000),
        "large_classed_thing": seg((0, 0, 200, 100), 15000, category="cup"),  # an image's main object, not stuff
    }
    instances = instances_of(list(segments.values()), h, w, PARAMS)
    expected = [segments[k] for k in ("kept", "at_min_area", "box_just_below", "large_classed_thing")]
    assert instances == [Instance(box=s.box, area=s.area, category=s.category) for s in expected]


def test_panoptic_sample_instances_exclude_stuff(panoptic):
    from pairmine.operators.annotations import load_panoptic_categories, parse_panoptic

    info = panoptic["image_info"]
    h, w = info["height"], info["width"]
    parsed = parse_panoptic(panoptic["annotation"]["segments_info"], load_panoptic_categories(panoptic["categories"]), h, w)
    instances = instances_of(parsed.segments, h, w, PARAMS)
    things = {c["id"] for c in panoptic["categories"] if c["isthing"]}
    expected = [
        s for s in panoptic["annotation"]["segments_info"]
        if s["category_id"] in things and s["area"] >= 0.001 * h * w
    ]
    assert [i.box for i in instances] == [tuple(float(v) for v in s["bbox"]) for s in expected]
    assert expected and all(i.category for i in instances)


def test_background_categories_are_those_of_its_instances():
    image = np.zeros((10, 10, 3), np.uint8)
    bg = Background("u/r", image, [Instance((0, 0, 1, 1), 1, "dog"), Instance((0, 0, 1, 1), 1, None), Instance((0, 0, 1, 1), 1, "cat")])
    assert bg.categories == {"dog", "cat"}


@pytest.mark.parametrize("height, width, short_side", [(400, 600, 256), (300, 500, 450), (1000, 700, 350)])
def test_resize_background_scales_image_and_instances_alike(height, width, short_side):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    instances = [Instance((40.0, 60.0, 100.0, 50.0), 3000.0, "dog"), Instance((0.0, 0.0, 10.0, 20.0), 150.0, None)]
    resized = resize_background(Background("u/r", image, instances), short_side)
    new_h, new_w = resized.image.shape[:2]
    assert min(new_h, new_w) == short_side and resized.image.dtype == np.uint8
    assert abs(new_w / new_h - width / height) < 2 / short_side  # aspect kept up to rounding
    scale = short_side / min(height, width)
    for before, after in zip(instances, resized.instances):
        np.testing.assert_allclose(after.box, np.array(before.box) * scale)
        assert after.area == pytest.approx(before.area * scale**2)
        assert after.category == before.category
    assert resized.record == "u/r" and resized.categories == {"dog"}


def test_resize_background_keeps_the_picture():
    """A smooth gradient stays a gradient: resizing back and comparing gives a small error."""
    yy, xx = np.mgrid[0:300, 0:400]
    image = np.stack([xx * 255 // 399, yy * 255 // 299, np.full_like(xx, 128)], -1).astype(np.uint8)
    small = resize_background(Background("u/r", image, []), 150).image
    assert small.shape == (150, 200, 3)
    np.testing.assert_allclose(small[..., 0], image[::2, ::2, 0], atol=2)
    np.testing.assert_allclose(small[..., 1], image[::2, ::2, 1], atol=2)
