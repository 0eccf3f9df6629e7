"""MOG2 over a static run: background and foreground frames against the ground truth; shadows; thresholds."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from pairmine.operators.video_mog import MogParams, classify, colourless, subtract_background

PARAMS = MogParams()


def test_frames_are_classified_as_the_ground_truth_says(static_clip):
    images, truth = static_clip
    classes = [classify(labels, PARAMS) for labels in subtract_background(images, PARAMS)]
    for cls, gt in zip(classes, truth):
        assert cls.kind == ("foreground" if gt.any() else "background")
    ious = [np.logical_and(c.mask, gt).sum() / np.logical_or(c.mask, gt).sum() for c, gt in zip(classes, truth) if gt.any()]
    assert min(ious) >= 0.6


def test_grey_footage_keeps_the_dark_parts_of_objects(static_clip):
    """Without colour, MOG2's shadow test (darker, same chromaticity) took dark parts of the object for shadow:
    on the clip made grey its masks covered 0.62 of the object at worst (colour: 0.96)."""
    images, truth = static_clip
    grey = [cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR) for image in images]
    assert colourless(grey[0]) and not colourless(images[0])
    classes = [classify(labels, PARAMS) for labels in subtract_background(grey, PARAMS)]
    assert [c.kind for c in classes] == ["foreground" if gt.any() else "background" for gt in truth]
    assert min((c.mask & gt).sum() / gt.sum() for c, gt in zip(classes, truth) if gt.any()) >= 0.95


def test_the_first_frames_of_a_run_are_judged_like_the_others(static_clip):
    images, truth = static_clip
    object_first = images[17:34] + images[:17]  # the run starts while the object is in view
    classes = [classify(labels, PARAMS) for labels in subtract_background(object_first, PARAMS)]
    assert [c.kind for c in classes] == ["foreground"] * 17 + ["background"] * 17


def _labels(*blocks: tuple[slice, slice, int]) -> np.ndarray:
    labels = np.zeros((270, 480), np.uint8)
    for rows, cols, value in blocks:
        labels[rows, cols] = value
    return labels


def test_shadows_are_not_object_but_spoil_a_background_frame():
    shadow_only = classify(_labels((slice(100, 160), slice(100, 200), 127)), PARAMS)
    assert shadow_only.objects == 0 and not shadow_only.mask.any() and shadow_only.shadow.any()
    assert shadow_only.kind == "neither"
    with_shadow = classify(_labels((slice(100, 160), slice(100, 200), 255), (slice(160, 180), slice(100, 200), 127)), PARAMS)
    assert with_shadow.kind == "foreground" and with_shadow.mask[103:157, 103:197].all() and not with_shadow.mask[165:].any()


def test_specks_are_noise_and_objects_must_be_in_range():
    specks = _labels(*[(slice(y, y + 1), slice(x, x + 1), 255) for y in range(10, 260, 25) for x in range(10, 470, 25)])
    assert classify(specks, PARAMS).kind == "background"
    huge = classify(_labels((slice(0, 270), slice(0, 300), 255)), PARAMS)
    assert huge.kind == "neither" and huge.area > PARAMS.max_object
    crowd = classify(_labels(*[(slice(100, 130), slice(x, x + 30), 255) for x in range(10, 460, 60)]), PARAMS)
    assert crowd.objects > PARAMS.max_objects and crowd.kind == "neither"


def test_thresholds_must_be_consistent():
    with pytest.raises(ValidationError, match="min_object"):
        MogParams(min_object=0.4, max_object=0.3)
    with pytest.raises(ValidationError, match="background_max_ratio"):
        MogParams(background_max_ratio=0.01, min_object=0.005)
