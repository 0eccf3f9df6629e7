"""Alpha blending of a pasted entity: ``source = alpha * entity + (1 - alpha) * background``.

Two ways to get the alpha, both on the entity crop only and both zero outside the mask, so every
changed pixel stays inside it (outside, source == target):
- ``feather``: a ramp from 0 at the mask's outline to 1 a few pixels inside (a distance transform);
- ``matting``: closed-form matting (Levin et al. 2008, as SmartEraser's release) on a trimap whose
  unknown band is the mask's inner edge: the alpha follows the entity's own colour edges there.
All blending arithmetic is uint8/uint16 on the pasted region only.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import scipy.linalg.lapack
import scipy.sparse
import scipy.sparse.csgraph
import scipy.sparse.linalg
from pydantic import Field

from .codecs import resample
from .params import Params


class BlendParams(Params):
    # Default by measurement (benchmarks/blending_bench.py, 48 SA-1B-sized images, one core): full resolution,
    # matting 114 ms/triplet vs. feather 92 (1.24x), boundary seam median 1.16 vs. 1.86 (p90 1.26 vs. 2.08);
    # 512-px backgrounds, 68 vs. 46 ms (1.47x), seam 1.59 vs. 2.40 (p90 2.03 vs. 3.37, a visible cut).
    method: Literal["feather", "matting"] = Field("matting", description="how the alpha is estimated: matting or feather")
    feather_ratio: float = Field(
        0.01, ge=0, le=0.5, description="feather width / sqrt(pasted mask area); 0 gives a hard edge"
    )
    matting_band_ratio: float = Field(
        0.04, gt=0, le=0.5, description="matting: depth of the unknown band inside the mask / sqrt(pasted mask area), at least 2 px"
    )
    matting_epsilon: float = Field(1e-7, gt=0, le=1, description="closed-form matting's regulariser (Levin et al.: 1e-7)")
    matting_max_side: int = Field(
        320, ge=32, le=4096, description="longer crops are matted at this size and the alpha scaled back (bounds the cost per paste)"
    )


def edge_px(mask_area: float, params: BlendParams) -> float:
    """Width of the soft edge of a pasted mask: the feather's ramp, or matting's unknown band."""
    if params.method == "matting":
        return max(2.0, params.matting_band_ratio * float(np.sqrt(mask_area)))
    return max(1.0, params.feather_ratio * float(np.sqrt(mask_area))) if params.feather_ratio > 0 else 0.0


def entity_alpha(pixels: np.ndarray, mask: np.ndarray, width_px: float, params: BlendParams) -> np.ndarray:
    """The uint8 alpha of a 0/1 entity mask by `params.method`, `width_px` wide at the outline."""
    if params.method == "matting":
        return matte_alpha(pixels, mask, width_px, params.matting_epsilon, params.matting_max_side)
    return feather_alpha(mask, width_px)


def inside_distance(mask: np.ndarray) -> np.ndarray:
    """Each mask pixel's distance to the outline (OpenCV's 3x3 L2), the crop edge counting as outline; 0 outside."""
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    return cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]


def feather_alpha(mask: np.ndarray, width_px: float) -> np.ndarray:
    """uint8 alpha from a 0/1 mask: 255 inside, ramping to 0 over `width_px` towards the outline."""
    if width_px <= 0:
        return mask * np.uint8(255)
    distance = inside_distance(mask)
    # at least 1 on every mask pixel, however wide the feather: the alpha's support is the mask
    return np.where(distance > 0, np.clip(distance * (255.0 / width_px), 1, 255), 0).astype(np.uint8)


_WINDOW = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
# L is symmetric: each pixel keeps its entries with the 13 stencil offsets forward of it in raster order (itself
# first), the upper triangle. Two positions p <= q of one 3x3 window lie on one of them; the pairs in that order:
_FORWARD = [(dy, dx) for dy in range(3) for dx in range(-2, 3) if dy > 0 or dx >= 0]
_PAIRS = [(p, q) for p in range(9) for q in range(p, 9)]
_PAIR_OFFSET = [_FORWARD.index((_WINDOW[q][0] - _WINDOW[p][0], _WINDOW[q][1] - _WINDOW[p][1])) for p, q in _PAIRS]
# How many 3x3 windows hold both a pixel and its neighbour at each offset: the "1 +" of every affinity summed
_SHARED_WINDOWS = np.array([(3 - abs(dy)) * (3 - abs(dx)) for dy, dx in _FORWARD], np.float64)[:, None]


def _whitened(r: np.ndarray, g: np.ndarray, b: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each window's centred colours (three (9, n) channel planes: position in the window, window) times
    L^-T, where L L^T = cov + floor I (batched closed-form 3x3 Cholesky), as three (9, n) planes Y: then
    centred (cov + floor I)^-1 centred^T = Y Y^T. ~8x np.linalg.inv's batched LU, and as accurate on
    two-colour or grey windows (rank-1 plus the regulariser), where a cofactor inverse loses digits. Each
    pivot is at least `floor` (eps/9) in exact arithmetic; clamping to it keeps rounding from making one
    zero or negative. Planes, not (n, 9, 3) pixels: dot products of contiguous rows instead of batched 3x3
    matmuls (~4x faster here)."""
    def moment(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # a (co)variance per window: the planes are centred
        return np.einsum("ij,ij->j", x, y) / 9

    l00 = np.sqrt(np.maximum(moment(r, r) + floor, floor))
    l10, l20 = moment(r, g) / l00, moment(r, b) / l00
    l11 = np.sqrt(np.maximum(moment(g, g) + floor - l10 * l10, floor))
    l21 = (moment(g, b) - l20 * l10) / l11
    l22 = np.sqrt(np.maximum(moment(b, b) + floor - l20 * l20 - l21 * l21, floor))
    y0 = r / l00
    y1 = (g - l10 * y0) / l11
    return y0, y1, (b - l20 * y0 - l21 * y1) / l22


def _products(y: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """(45, n) Y_p . Y_q of the window position pairs p <= q (`_PAIRS`), from the (9, n) planes of
    `_whitened`, summed in place (no temporaries)."""
    products, term = np.empty((len(_PAIRS), y[0].shape[1])), np.empty_like(y[0])
    first = 0
    for p in range(9):
        row, part = products[first:first + 9 - p], term[p:]
        np.multiply(y[0][p], y[0][p:], out=row)
        row += np.multiply(y[1][p], y[1][p:], out=part)
        row += np.multiply(y[2][p], y[2][p:], out=part)
        first += 9 - p
    return products


def _matting_system(image: np.ndarray, unknown: np.ndarray, alpha: np.ndarray, epsilon: float) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """The upper triangle of L_uu (CSR), and -L_uk a_k, of the matting Laplacian L = D - W of `image` (float
    RGB in [0, 1]) on the `unknown` pixels (none within 2 px of the border), W_ij = sum over 3x3 windows of
    (1 + (I_i - mu)^T (cov + eps/9 I)^-1 (I_j - mu)) / 9 (Levin et al., eq. 12).

    Every affinity lies on a stencil offset, so each unknown pixel's row is gathered per forward offset from
    the windows that hold it: no scatter, and each symmetric pair once. A pixel's window terms sum to 1 over
    the window (its centred colours sum to 0), so D_ii = 9; the known neighbours' share of the right-hand side
    is summed per window the same way."""
    h, w = image.shape[:2]
    near = cv2.dilate(unknown.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # windows touching the band
    near[:1], near[-1:], near[:, :1], near[:, -1:] = False, False, False, False
    centres = np.flatnonzero(near)
    window = np.array([dy * w + dx for dy, dx in _WINDOW])
    index = window[:, None] + centres[None, :]  # (9, windows): the pixels of each window
    mean = cv2.blur(image, (3, 3)).reshape(-1, 3)[centres]  # each window's mean, read at its centre
    planes = np.moveaxis(image, -1, 0).reshape(3, -1)  # contiguous channel planes: gathers read one value each
    y = _whitened(*(planes[c][index] - mean[:, c] for c in range(3)), epsilon / 9)
    u = np.flatnonzero(unknown)
    column = np.zeros(h * w, np.intp)
    column[centres] = np.arange(centres.size)
    # (9, n): the window holding each unknown pixel at position p; an unknown pixel lies 2 px or more inside
    # the image, so all nine of its windows are among the centres
    holding = column[u[None, :] - window[:, None]]
    upper = np.zeros((len(_FORWARD), u.size))
    for (p, _), offset, product in zip(_PAIRS, _PAIR_OFFSET, _products(y)):
        upper[offset] += product[holding[p]]
    upper += _SHARED_WINDOWS
    upper /= -9  # -W_ij off the diagonal
    upper[0] += 9  # D_ii - W_ii
    # -L_uk a_k = sum over a pixel's windows of (s + Y_p . v) / 9, s and v the window's sums of a_k and a_k Y_q
    known = np.where(unknown, 0.0, alpha).ravel()[index]
    share = known.sum(axis=0) + sum(y[c] * np.einsum("ij,ij->j", known, y[c]) for c in range(3))
    rhs = sum(share[p][holding[p]] for p in range(9)) / 9
    position = np.full(h * w, u.size)  # each pixel's row; u.size for the known ones, dropped below
    position[u] = np.arange(u.size)
    neighbour = position[u[:, None] + np.array([dy * w + dx for dy, dx in _FORWARD])]  # raster order: sorted
    inside = neighbour < u.size
    indptr = np.concatenate(([0], np.cumsum(np.count_nonzero(inside, axis=1))))
    return scipy.sparse.csr_matrix((upper.T[inside], neighbour[inside], indptr), shape=(u.size, u.size)), rhs


def _symmetric(upper: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
    """The whole symmetric matrix of its upper triangle."""
    return (upper + upper.T - scipy.sparse.diags(upper.diagonal())).tocsr()


# A banded Cholesky costs ~ n * bandwidth^2: measured faster than CG up to bandwidth ~190 on SA-1B pastes
# at the default 320-px matting size, and its band matrix is kept under 32 MB
_MAX_BANDWIDTH, _MAX_BAND_VALUES = 192, 1 << 23


def _solve_banded(upper: scipy.sparse.csr_matrix, rhs: np.ndarray) -> np.ndarray | None:
    """L_uu a = rhs, from its upper triangle, by a banded Cholesky after reverse Cuthill-McKee ordering (an
    unknown band along an outline orders into a narrow band: exact, and faster than CG there); None when its
    bandwidth is too wide or it is not numerically positive definite. The factor is float32 (LAPACK's spbtrf,
    ~1.7x dpbtrf's speed) and one step of iterative refinement on the float64 residual brings the solution
    back to float64 accuracy (1e-7 of a level on SA-1B pastes, against 5e-3 unrefined)."""
    n = upper.shape[0]
    order = scipy.sparse.csgraph.reverse_cuthill_mckee(upper, symmetric_mode=False)  # it adds the transpose
    rank = np.empty_like(order)
    rank[order] = np.arange(n)
    row, col = np.repeat(rank, np.diff(upper.indptr)), rank[upper.indices]
    row, col = np.minimum(row, col), np.maximum(row, col)  # each entry in the reordered upper triangle
    lag = col - row
    bandwidth = int(lag.max(initial=0))
    if bandwidth > _MAX_BANDWIDTH or (bandwidth + 1) * n > _MAX_BAND_VALUES:
        return None
    # LAPACK's upper band storage, (bandwidth + 1, n) in Fortran order as LAPACK reads it (a C-order one is
    # copied on the way in), filled through its flat index
    banded = np.zeros(n * (bandwidth + 1), np.float32)
    banded[col * (bandwidth + 1) + bandwidth - lag] = upper.data
    factor, info = scipy.linalg.lapack.spbtrf(banded.reshape(n, bandwidth + 1).T, overwrite_ab=True)
    if info:
        return None

    def solved(b: np.ndarray) -> np.ndarray:
        x = np.empty_like(b)
        x[order] = scipy.linalg.lapack.spbtrs(factor, b[order].astype(np.float32))[0]
        return x

    alpha = solved(rhs)
    return alpha + solved(rhs - (upper @ alpha + upper.T @ alpha - upper.diagonal() * alpha))


def _solve_matte(pixels: np.ndarray, mask: np.ndarray, band_px: float, epsilon: float) -> np.ndarray:
    """Float alpha in [0, 1] of a 0/1 mask by closed-form matting of `pixels` (BGR): 1 on the mask eroded by
    `band_px`, 0 outside the mask, solved in between (L_uu a_u = -L_uk a_k on the unknown band only)."""
    pad = 2  # known background around the crop (its edge is an outline) and room for the 3x3 windows
    known = cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    image = cv2.copyMakeBorder(pixels, pad, pad, pad, pad, cv2.BORDER_REPLICATE)[..., ::-1].astype(np.float64) / 255
    radius = max(1, int(round(band_px)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    foreground = cv2.erode(known, disk, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    unknown = (known > 0) & (foreground == 0)
    alpha = foreground.astype(np.float64)
    if unknown.any():
        upper, rhs = _matting_system(image, unknown, alpha, epsilon)
        u = np.flatnonzero(unknown)
        solved = _solve_banded(upper, rhs)
        if solved is None:  # L_uu is symmetric positive definite: Jacobi-preconditioned conjugate gradients
            system, diagonal = _symmetric(upper), upper.diagonal()
            jacobi = scipy.sparse.linalg.LinearOperator(system.shape, matvec=lambda x: x / diagonal)
            # from the feathered guess, within 1/255 of the exact solution
            guess = np.clip(cv2.distanceTransform(known, cv2.DIST_L2, 3).ravel()[u] / (radius + 1), 0, 1)
            solved, _ = scipy.sparse.linalg.cg(system, rhs, x0=guess, M=jacobi, rtol=1e-5, maxiter=1000)
        alpha.ravel()[u] = np.clip(np.nan_to_num(solved, nan=1.0), 0, 1)
    return alpha[pad:-pad, pad:-pad]


def matte_alpha(pixels: np.ndarray, mask: np.ndarray, band_px: float, epsilon: float = 1e-7, max_side: int = 320) -> np.ndarray:
    """uint8 alpha of a 0/1 mask by closed-form matting of `pixels` (BGR): 255 deeper than `band_px` inside the
    mask, 0 outside it, matted on the band. A crop longer than `max_side` is matted at that size (its band
    scaled with it) and the alpha brought back up, so a paste costs about the same at any resolution."""
    height, width = mask.shape
    scale = min(1.0, max_side / max(height, width))
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small_mask = (resample(mask.astype(np.float32), size) >= 0.5).astype(np.uint8)
        small = _solve_matte(resample(pixels, size), small_mask, max(1.0, band_px * scale), epsilon)
        alpha = cv2.resize(small.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        alpha = np.where(inside_distance(mask) > band_px, 1.0, alpha)  # the core stays opaque at full resolution
    else:
        alpha = _solve_matte(pixels, mask, band_px, epsilon)
    return np.rint(np.clip(alpha, 0, 1) * 255).astype(np.uint8) * (mask > 0)


def _clipped(shape: tuple[int, ...], x: int, y: int, height: int, width: int) -> tuple[slice, slice, slice, slice]:
    """(rows, cols) in the image and (rows, cols) in the crop of a `shape` crop placed at (x, y), clipped."""
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + shape[1], width), min(y + shape[0], height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError("pasted box lies outside the background")
    return slice(y0, y1), slice(x0, x1), slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)


def place(crop: np.ndarray, x: int, y: int, height: int, width: int) -> np.ndarray:
    """A single-channel crop on a zero canvas of (height, width) at corner (x, y), clipped to it."""
    rows, cols, crop_rows, crop_cols = _clipped(crop.shape, x, y, height, width)
    canvas = np.zeros((height, width), crop.dtype)
    canvas[rows, cols] = crop[crop_rows, crop_cols]
    return canvas


def paste(
    background: np.ndarray, entity: np.ndarray, alpha: np.ndarray, x: int, y: int
) -> tuple[np.ndarray, np.ndarray]:
    """Blend `entity` (BGR) with `alpha` into a copy of `background` at corner (x, y), clipped to the image.

    Returns the source image and the full-size alpha map.
    """
    height, width = background.shape[:2]
    rows, cols, crop_rows, crop_cols = _clipped(entity.shape, x, y, height, width)
    fg = entity[crop_rows, crop_cols].astype(np.uint16)
    a = alpha[crop_rows, crop_cols, None].astype(np.uint16)
    source = background.copy()
    bg = source[rows, cols].astype(np.uint16)
    source[rows, cols] = ((fg * a + bg * (255 - a) + 127) // 255).astype(np.uint8)
    return source, place(alpha, x, y, height, width)
