"""Quality signals of a pair, from its pixels, written into every sample's json (``quality``), so a training
team can filter pairs without mining again; optional thresholds reject with a reason.

Syn4Removal (``paste_signals``): how visible the paste outline is, and how the entity's colour and
brightness differ from its new surround. Video4Removal (``frame_signals``): how the two frames differ
outside the object (residual error, exposure) and whether one is blurred (sharpness ratio). Both also
record a perceptual hash of the object (``perceptual_hash``), for the writer's near-duplicate cap.
"""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import Field

from ..dataset import Reject
from .params import Params

_DISK = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))


class PasteQualityParams(Params):
    """Thresholds on a Syn4Removal paste's signals; null: record the signal, reject nothing."""

    max_seam: float | None = Field(None, gt=0, description="paste outline gradient / gradient just inside and outside it, at most")
    max_colour_delta: float | None = Field(None, gt=0, description="Lab chroma distance entity vs surround (0-180), at most")
    max_luminance_delta: float | None = Field(None, gt=0, description="Lab lightness difference entity vs surround (0-100), at most")


class FrameQualityParams(Params):
    """Thresholds on a Video4Removal pair's signals; null: record the signal, reject nothing."""

    max_residual: float | None = Field(None, gt=0, description="mean absolute grey difference outside the mask (0-255), at most")
    max_exposure_delta: float | None = Field(None, gt=0, description="mean grey level difference outside the mask (0-255), at most")
    min_sharpness_ratio: float | None = Field(None, gt=0, le=1, description="sharpness of the blurrier frame / the sharper one, at least")


def _depth(mask: np.ndarray) -> np.ndarray:
    """Each pixel's signed L1 distance to the other side of a 0/1 `mask`'s outline: k inside (the pixel survives
    k - 1 erosions by `_DISK`, the 3x3 cross), -k outside (k dilations reach it), never 0. Two distance
    transforms give every ring at once, where iterated dilations cost a pass per pixel of width."""
    return cv2.distanceTransform(mask, cv2.DIST_L1, 3) - cv2.distanceTransform(1 - mask, cv2.DIST_L1, 3)


def _grown(depth: np.ndarray, px: int) -> np.ndarray:
    """The mask grown by `px` px (shrunk when negative), as `px` cv2.dilate (cv2.erode) iterations with `_DISK`."""
    return depth >= -px if px > 0 else depth > -px


def _ring(depth: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Pixels between `inner` and `outer` px outside the mask of `depth` (negative: inside)."""
    return _grown(depth, outer) & ~_grown(depth, inner)


def _reach(area: float) -> int:
    """How far around an object of `area` px its surround ring reaches (a tenth of its size, at least 4 px)."""
    return max(4, int(0.1 * np.sqrt(area)))


def bounding_window(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice] | None:
    """(rows, cols) of the box of `mask`'s nonzero pixels grown by `margin` (clipped at 0), or None when there
    are none. cv2.boundingRect scans without listing the pixels: ~40x np.nonzero on a 2250x1500 mask."""
    if mask.dtype != np.uint8:
        mask = (mask != 0).view(np.uint8)
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask))
    if w == 0:
        return None
    return slice(max(0, y - margin), y + h + margin), slice(max(0, x - margin), x + w + margin)


def _mean(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Per-channel mean of `image` over the boolean `where` (cv2.mean: no gather of the selected pixels)."""
    return np.array(cv2.mean(image, mask=where.view(np.uint8))[: image.shape[2] if image.ndim == 3 else 1])


def paste_signals(source: np.ndarray, alpha: np.ndarray, box: tuple[int, int, int, int] | None = None) -> dict[str, float]:
    """Signals of an entity pasted into `source` (BGR) with `alpha` (0-255): `seam` (mean gradient on the
    outline over the mean gradient 2-4 px inside and outside it: ~1-3 where the paste blends in, high for a hard
    cut), `colour_delta` and `luminance_delta` (Lab, the entity's interior vs. a ring of surround as wide as a
    tenth of its size). `box` (x, y, w, h), where alpha is known to be 0 outside it, spares scanning the rest."""
    if box is not None:
        x, y, w, h = box
        margin = _reach(w * h) + 3  # the widest window the object inside the box can need
        around = (slice(max(0, y - margin), max(0, y + h + margin)), slice(max(0, x - margin), max(0, x + w + margin)))
        source, alpha = source[around], alpha[around]
    obj = (alpha >= 128).astype(np.uint8)
    if not obj.any():
        return {}
    reach = _reach(obj.sum())
    rows, cols = bounding_window(obj, reach + 2)
    obj, image = obj[rows, cols], source[rows, cols]
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    gradient = cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)) / 4
    depth = _depth(obj)
    outline, near = _ring(depth, -1, 1), _ring(depth, -4, -2) | _ring(depth, 2, 4)
    inside, around = _grown(depth, -2), _ring(depth, 2, reach)
    if not inside.any():
        inside = obj > 0
    signals = {"seam": float(_mean(gradient, outline)[0] / (_mean(gradient, near)[0] + 1.0)) if near.any() else 0.0}
    if around.any():
        lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)  # 8-bit Lab: L scaled to 0-255, a and b offset by 128
        a_in, a_out = _mean(lab, inside), _mean(lab, around)
        signals["colour_delta"] = float(np.hypot(*(a_in[1:] - a_out[1:])))
        signals["luminance_delta"] = float(abs(a_in[0] - a_out[0]) * 100 / 255)
    return {k: round(v, 4) for k, v in signals.items()}


def frame_signals(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Signals of a real pair (BGR frames, 0/1 or 0/255 `mask` of the object): `residual` (mean absolute grey
    difference outside the mask, dilated 4 px), `exposure_delta` (difference of the mean grey levels there) and
    `sharpness_ratio` (variance of the Laplacian, the blurrier frame over the sharper one: 1 when alike)."""
    outside = ~(cv2.dilate((mask > 0).astype(np.uint8), _DISK, iterations=4) > 0)
    grey_s, grey_t = (cv2.cvtColor(f, cv2.COLOR_BGR2GRAY).astype(np.float32) for f in (source, target))
    if not outside.any():
        return {}
    sharp = [float(cv2.Laplacian(g, cv2.CV_32F)[outside].var()) for g in (grey_s, grey_t)]
    signals = {
        "residual": float(np.abs(grey_s - grey_t)[outside].mean()),
        "exposure_delta": float(abs(grey_s[outside].mean() - grey_t[outside].mean())),
        "sharpness_ratio": min(sharp) / max(sharp) if max(sharp) > 0 else 1.0,
    }
    return {k: round(v, 4) for k, v in signals.items()}


def perceptual_hash(image: np.ndarray, mask: np.ndarray) -> str:
    """A 64-bit pHash (16 hex digits) of the object `mask` (0/1 or 0/255) selects in `image` (BGR), cropped to
    its box with the rest set to the object's mean grey: the low 8x8 DCT frequencies of a 32x32 thumbnail
    against their median. Invariant to scale and JPEG noise, so the same object pasted or filmed again at
    another size lands in the same bucket; different objects rarely do."""
    box = bounding_window(mask)
    if box is None:
        return "0" * 16
    grey = cv2.cvtColor(image[box], cv2.COLOR_BGR2GRAY).astype(np.float32)
    inside = mask[box] > 0
    grey[~inside] = grey[inside].mean()
    low = cv2.dct(cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA))[:8, :8].ravel()
    bits = low[1:] > np.median(low[1:])  # the DC term only says how bright: left out
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def quality_reject(signals: dict[str, float], params: Params) -> Reject | None:
    """The first threshold of `params` (``max_<signal>`` / ``min_<signal>``) that `signals` breaks, as a reject."""
    for name, bound in params.model_dump().items():
        kind, _, signal = name.partition("_")
        value = signals.get(signal)
        if bound is None or value is None:
            continue
        if (kind == "max" and value > bound) or (kind == "min" and value < bound):
            return Reject.because(f"quality_{signal}", f"{signal} {value:.3f} {'>' if kind == 'max' else '<'} {bound}")
    return None
