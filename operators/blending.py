"""Alpha blending of a pasted entity: ``source = alpha * entity + (1 - alpha) * background``.

The alpha ramps from 0 at the mask's outline to 1 a few pixels inside (feathering), so the paste
has soft edges while every changed pixel stays inside the mask: outside it, source == target.
All arithmetic is uint8/uint16 on the pasted region only.
"""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import Field

from .params import Params


class BlendParams(Params):
    feather_ratio: float = Field(
        0.01, ge=0, le=0.5, description="feather width / sqrt(pasted mask area); 0 gives a hard edge"
    )


def feather_px(mask_area: float, params: BlendParams) -> float:
    return max(1.0, params.feather_ratio * float(np.sqrt(mask_area))) if params.feather_ratio > 0 else 0.0


def feather_alpha(mask: np.ndarray, width_px: float) -> np.ndarray:
    """uint8 alpha from a 0/1 mask: 255 inside, ramping to 0 over `width_px` towards the outline."""
    if width_px <= 0:
        return mask * np.uint8(255)
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)  # the crop edge is an outline too
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    # at least 1 on every mask pixel, however wide the feather: the alpha's support is the mask
    return np.where(distance > 0, np.clip(distance * (255.0 / width_px), 1, 255), 0).astype(np.uint8)


def paste(
    background: np.ndarray, entity: np.ndarray, alpha: np.ndarray, x: int, y: int
) -> tuple[np.ndarray, np.ndarray]:
    """Blend `entity` (BGR) with `alpha` into a copy of `background` at corner (x, y), clipped to the image.

    Returns the source image and the full-size alpha map.
    """
    height, width = background.shape[:2]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + entity.shape[1], width), min(y + entity.shape[0], height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError("pasted box lies outside the background")
    fg = entity[y0 - y : y1 - y, x0 - x : x1 - x].astype(np.uint16)
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x, None].astype(np.uint16)
    source = background.copy()
    bg = source[y0:y1, x0:x1].astype(np.uint16)
    source[y0:y1, x0:x1] = ((fg * a + bg * (255 - a) + 127) // 255).astype(np.uint8)
    full_alpha = np.zeros((height, width), np.uint8)
    full_alpha[y0:y1, x0:x1] = a[..., 0]
    return source, full_alpha
