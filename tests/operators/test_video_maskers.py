"""The mog masker: refines a coarse MOG2-like prior at full resolution; refuses priors that point at nothing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from pairmine.operators.maskers import MaskInput, MogMasker
from pairmine.operators.video4removal import Video4RemovalParams
from pairmine.operators.video_io import read_frames

SOURCE, TARGET = 75, 0  # object mid-way / empty scene


@pytest.fixture(scope="module")
def pair(testdata):
    """Full-resolution source and target of synth_static_dev, the source's ground truth, and a coarse prior."""
    video = testdata / "video"
    frames = {f.index: f.image for f in read_frames(str(video / "synth_static_dev.mp4"), [TARGET, SOURCE], ("pyav",), None, 1).frames}
    truth = np.load(video / "synth_static_dev.gt.npz")["masks"][SOURCE].astype(np.uint8)
    small = cv2.resize(truth, (480, 270), interpolation=cv2.INTER_AREA)
    prior = cv2.erode(small, np.ones((9, 9), np.uint8))  # coarse and too small, like a MOG2 mask with holes at the edges
    return frames[SOURCE], frames[TARGET], truth, prior


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.logical_and(a > 0, b > 0).sum() / np.logical_or(a > 0, b > 0).sum()


@pytest.mark.parametrize("grabcut", [False, True])
def test_refined_mask_matches_the_object_better_than_the_prior(pair, grabcut):
    source, target, truth, prior = pair
    (result,) = MogMasker(grabcut=grabcut).masks([MaskInput(source, target, prior)])
    assert result.mask is not None and result.mask.shape == truth.shape and result.mask.dtype == np.uint8
    assert set(np.unique(result.mask)) == {0, 255}
    prior_full = cv2.resize(prior, truth.shape[::-1], interpolation=cv2.INTER_NEAREST)
    assert iou(result.mask, truth) >= 0.6
    assert iou(result.mask, truth) > iou(prior_full, truth)


def test_a_prior_where_nothing_changed_is_refused(pair):
    source, target, _, prior = pair
    elsewhere = np.roll(prior, 240, axis=1)  # half a frame away from the object
    (result,) = MogMasker().masks([MaskInput(source, target, elsewhere)])
    assert result.mask is None and result.reject.reason in {"mask_too_small", "mask_disagrees"} and result.reject.detail


def test_identical_frames_give_no_mask(pair):
    source, _, _, prior = pair
    (result,) = MogMasker().masks([MaskInput(source, source, prior)])
    assert result.mask is None and result.reject.reason == "mask_too_small"


def test_masker_is_chosen_by_name():
    assert Video4RemovalParams(masker={"name": "mog", "grabcut": True}).masker.grabcut
    with pytest.raises(ValidationError):
        Video4RemovalParams(masker={"name": "sam2"})
