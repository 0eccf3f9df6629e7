"""Parse SA-1B, COCO-panoptic and Open Images annotations into segments, and decode one segment's mask.

Parsing never decodes masks: area and box come from the RLE (pycocotools, batched) or from
``segments_info``, so cheap filters run before any pixel work. Masks are decoded only for the
segments that survive, cropped to their box, and RLE counts are validated first (a corrupt
counts string must not write past the mask buffer).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..dataset import Reject
from .codecs import BadInput, mask_foreground, read_header


@dataclass
class Segment:
    """One annotated region of an image, before its mask is decoded."""

    index: int  # position in the image's annotation list
    box: tuple[float, float, float, float]  # x, y, w, h in pixels
    area: float  # mask area in pixels
    category: str | None = None
    thing: bool = True  # panoptic: countable object (vs. stuff); SA-1B: always True
    crowd: bool = False
    scores: dict[str, float] = field(default_factory=dict)
    rle: dict | None = None  # SA-1B: compressed COCO RLE
    segment_id: int | None = None  # panoptic: id in the PNG
    source_id: str | None = None  # the dataset's own id of the annotation (SA-1B `id`, panoptic `id`, Open Images `MaskPath`)


@dataclass
class Annotations:
    segments: list[Segment]
    invalid: dict[int, Reject]  # segment index -> why its annotation is unusable


_SCORE_KEYS = ("predicted_iou", "stability_score")


def load_json(data: bytes | str) -> object:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput("malformed_json", str(exc)) from None
    except RecursionError:
        raise BadInput("malformed_json", "nested too deeply") from None


# A compressed COCO RLE string: characters '0'..'o' (6 bits each), the last one ending a value (bit 0x20 clear).
# pycocotools' area / toBbox read past the end of a string that breaks this, and answer garbage that changes from
# call to call; the full check (sum of runs) is rle_runs', when a mask is decoded.
_RLE_COUNTS = re.compile("[0-o]*[0-O]")


def declared_size(doc: object) -> tuple[int, int] | None:
    """The (height, width) an SA-1B per-image JSON was made for: its first RLE's size, else its image entry."""
    anns = doc.get("annotations") if isinstance(doc, dict) else None
    for ann in anns if isinstance(anns, list) else []:
        size = ann.get("segmentation", {}).get("size") if isinstance(ann, dict) and isinstance(ann.get("segmentation"), dict) else None
        if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size):
            return size[0], size[1]
    image = doc.get("image") if isinstance(doc, dict) else None
    if isinstance(image, dict) and isinstance(image.get("height"), int) and isinstance(image.get("width"), int):
        return image["height"], image["width"]
    return None


def parse_sa1b(data: bytes | dict, height: int, width: int) -> Annotations:
    """Segments of an SA-1B per-image JSON (bytes, or already parsed), checked against the decoded image size."""
    doc = load_json(data) if isinstance(data, (bytes, str)) else data
    if not isinstance(doc, dict):
        raise BadInput("malformed_json", f"the JSON is {type(doc).__name__}, not an object")
    anns = doc.get("annotations")
    if not isinstance(anns, list):
        raise BadInput("malformed_json", "no 'annotations' list")
    rles: list[dict] = []
    kept: list[tuple[int, dict]] = []
    invalid: dict[int, Reject] = {}
    for index, ann in enumerate(anns):
        seg = ann.get("segmentation") if isinstance(ann, dict) else None
        size = seg.get("size") if isinstance(seg, dict) else None
        counts = seg.get("counts") if isinstance(seg, dict) else None
        if not (isinstance(size, list) and len(size) == 2 and isinstance(counts, (str, list))):
            invalid[index] = Reject.because("malformed_annotation", "segmentation is not a COCO RLE")
            continue
        if list(size) != [height, width]:
            invalid[index] = Reject.because("rle_size_mismatch", f"RLE size {size[1]}x{size[0]} != image {width}x{height}")
            continue
        rle = {"size": [height, width], "counts": counts}
        if isinstance(counts, str) and not _RLE_COUNTS.fullmatch(counts):
            invalid[index] = Reject.because("corrupt_rle", "RLE counts are not a COCO RLE string")
            continue
        if isinstance(counts, list):  # uncompressed RLE: compress once so every later step sees one form
            if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= height * width for n in counts):
                invalid[index] = Reject.because("malformed_annotation", "uncompressed RLE counts are not run lengths in [0, h*w]")
                continue
            rle = mask_utils.frPyObjects(rle, height, width)
            rle["counts"] = rle["counts"].decode("ascii")
        rles.append(rle)
        kept.append((index, ann))
    if not rles:
        return Annotations([], invalid)
    areas = mask_utils.area(rles)
    boxes = mask_utils.toBbox(rles)
    segments = []
    for (index, ann), rle, area, box in zip(kept, rles, areas, boxes):
        scores = {k: _number(ann[k]) for k in _SCORE_KEYS if isinstance(ann.get(k), (int, float)) and not isinstance(ann[k], bool)}
        typed = [k for k in _SCORE_KEYS if ann.get(k) is not None and k not in scores]
        if typed:  # "0.93": a writer's bug, said as such (it read as a missing score)
            invalid[index] = Reject.because("malformed_annotation", ", ".join(f"{k} is {type(ann[k]).__name__} {ann[k]!r:.20}, not a number" for k in typed))
            continue
        bad = [k for k, v in scores.items() if not math.isfinite(v)]
        if bad:  # NaN passes every < / > filter: refused here, by name
            invalid[index] = Reject.because("non_finite_value", f"{', '.join(bad)} = {', '.join(str(scores[k]) for k in bad)}")
            continue
        source_id = ann.get("id")
        segments.append(Segment(index=index, box=tuple(float(v) for v in box), area=float(area), scores=scores, rle=rle,
                                source_id=str(source_id) if isinstance(source_id, (int, str)) and not isinstance(source_id, bool) else None))
    return Annotations(segments, invalid)


def _number(value: int | float) -> float:
    """A JSON number as a float; an integer too large for one becomes infinity (and is then refused)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def load_panoptic_categories(categories: list) -> dict[int, dict]:
    """Map category id -> {"name", "isthing"} from a COCO ``categories`` list."""
    if not isinstance(categories, list):
        raise BadInput("malformed_json", "'categories' is not a list")
    try:
        return {int(c["id"]): {"name": str(c["name"]), "isthing": bool(c.get("isthing", 1))} for c in categories}
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput("malformed_json", f"bad category entry: {exc}") from None


def segments_info_of(doc: object) -> list:
    """Accept both layouts of a per-image panoptic annotation: a dict with ``segments_info`` or a bare list."""
    info = doc.get("segments_info") if isinstance(doc, dict) else doc
    if not isinstance(info, list):
        raise BadInput("malformed_json", "expected a 'segments_info' list or a bare list of segments")
    return info


def parse_panoptic(segments_info: list, categories: dict[int, dict], height: int, width: int) -> Annotations:
    """Segments of one panoptic image (areas and boxes as declared in ``segments_info``)."""
    segments, invalid = [], {}
    for index, info in enumerate(segments_info):
        try:
            seg_id, cat_id = int(info["id"]), int(info["category_id"])
            x, y, w, h = (float(v) for v in info["bbox"])
            area = float(info["area"])
        except (KeyError, TypeError, ValueError, OverflowError):
            invalid[index] = Reject.because("malformed_annotation", "segment lacks id/category_id/bbox/area")
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h, area)):
            invalid[index] = Reject.because("non_finite_value", f"bbox {[x, y, w, h]}, area {area}")
            continue
        category = categories.get(cat_id)
        if category is None:
            invalid[index] = Reject.because("unknown_category", f"category_id {cat_id} is not in the categories")
            continue
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width + 1 or y + h > height + 1:
            invalid[index] = Reject.because("bad_bbox", f"bbox {[x, y, w, h]} outside the {width}x{height} image")
            continue
        segments.append(
            Segment(
                index=index,
                box=(x, y, w, h),
                area=area,
                category=category["name"],
                thing=category["isthing"],
                crowd=bool(info.get("iscrowd", 0)),
                segment_id=seg_id,
                source_id=str(seg_id),
            )
        )
    return Annotations(segments, invalid)


_OI_BOX = ("BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax")


def _mask_rle(data: bytes, height: int, width: int, max_pixels: int) -> dict:
    """An Open Images mask PNG as a compressed RLE at the image's size (resized: masks come at their own
    resolution); a mask whose aspect ratio is not the image's belongs to another image and is refused."""
    try:
        read_header(data, max_pixels)  # the declared size first: a decompression bomb is refused undecoded
    except BadInput as bad:
        if bad.reason == "image_too_large":
            raise
        raise BadInput("corrupt_mask", f"mask is not a decodable image: {bad.detail}") from None
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # colour, 16 bits and alpha as saved
    if mask is None:
        raise BadInput("corrupt_mask", "mask is not a decodable image")
    if abs(mask.shape[1] / mask.shape[0] - width / height) > 0.02 * width / height + 1.5 / mask.shape[0]:
        raise BadInput("mask_size_mismatch", f"mask is {mask.shape[1]}x{mask.shape[0]}, image {width}x{height}: another aspect ratio")
    binary = mask_foreground(mask).astype(np.uint8)
    if binary.shape != (height, width):  # its object's edge resampled, halfway between in and out
        binary = (cv2.resize(binary * 255, (width, height), interpolation=cv2.INTER_LINEAR) > 127).astype(np.uint8)
    binary = np.asfortranarray(binary)
    if not binary.any():
        raise BadInput("empty_mask", "mask has no foreground")
    rle = mask_utils.encode(binary)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def parse_openimages(
    rows: object, masks: list[bytes | None], categories: dict, height: int, width: int, max_pixels: int,
) -> Annotations:
    """Segments of one Open Images image: its csv rows (``categories``: label id -> {"name", "count"} over
    the split) with their mask PNGs; boxes and areas come from the masks, resized to the image."""
    if not isinstance(rows, list) or len(rows) != len(masks):
        raise BadInput("malformed_annotation", "annotation rows and masks do not match")
    segments, invalid = [], {}
    for index, (row, data) in enumerate(zip(rows, masks)):
        try:
            label, box = row["LabelName"], [float(row[k]) for k in _OI_BOX]
            iou = float(row["PredictedIoU"]) if row.get("PredictedIoU") not in (None, "") else None
        except (KeyError, TypeError, ValueError):
            invalid[index] = Reject.because("malformed_annotation", "row lacks LabelName or a numeric box / PredictedIoU")
            continue
        if not all(math.isfinite(v) for v in box + ([iou] if iou is not None else [])):
            invalid[index] = Reject.because("non_finite_value", f"box {box}, PredictedIoU {iou}")
            continue
        category = categories.get(label)
        if category is None:
            invalid[index] = Reject.because("unknown_category", f"label {label!r} is not in the class descriptions")
            continue
        if data is None:
            invalid[index] = Reject.because("missing_mask", f"{row.get('MaskPath')} is not in the masks (folder or zips)")
            continue
        try:
            rle = _mask_rle(data, height, width, max_pixels)
        except BadInput as bad:
            invalid[index] = bad.reject
            continue
        scores = {"predicted_iou": iou} if iou is not None else {}
        area, bbox = float(mask_utils.area(rle)), tuple(float(v) for v in mask_utils.toBbox(rle))
        segments.append(Segment(index=index, box=bbox, area=area, category=category["name"], scores=scores, rle=rle,
                                source_id=row.get("MaskPath") or None))
    return Annotations(segments, invalid)


def rle_runs(counts: str) -> np.ndarray:
    """Run lengths of a compressed COCO RLE string (vectorised port of pycocotools' rleFrString)."""
    if not counts.isascii():  # checked first: .encode("ascii") would raise a non-BadInput error
        raise BadInput("corrupt_rle", "RLE counts hold non-ASCII characters")
    c = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    if c.size == 0 or c.min() < 0 or c.max() > 63:
        raise BadInput("corrupt_rle", "RLE counts hold characters outside the COCO alphabet")
    last = (c & 0x20) == 0  # this character ends a value
    if not last[-1]:
        raise BadInput("corrupt_rle", "RLE counts end in the middle of a value")
    value_of_char = np.concatenate(([0], np.cumsum(last)[:-1]))
    first_char = np.flatnonzero(np.concatenate(([True], last[:-1])))
    shift = 5 * (np.arange(c.size) - first_char[value_of_char])
    if shift.max() > 30:  # 7 characters = 35 bits, far beyond any image; keeps the float sums exact
        raise BadInput("corrupt_rle", "RLE value too long")
    values = np.bincount(value_of_char, weights=(c & 0x1F) << shift).astype(np.int64)
    ends = np.flatnonzero(last)
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (shift[ends][negative] + 5)
    runs = values.copy()  # from the third value on, each is a delta to the value two places back
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def decode_rle_crop(rle: dict, height: int, width: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Decode an RLE mask cropped to its exact bounds; returns (uint8 0/1 crop, (x0, y0, x1, y1))."""
    runs = rle_runs(rle["counts"])
    if runs.min() < 0 or runs.sum() != height * width:
        raise BadInput("corrupt_rle", f"RLE runs cover {int(runs.sum())} px, image has {height * width}")
    ends = np.cumsum(runs)
    starts = ends - runs
    foreground = (np.arange(runs.size) % 2 == 1) & (runs > 0)
    if not foreground.any():
        raise BadInput("empty_mask", "RLE mask has no foreground")
    # Runs are column-major: expand only the span of columns the object occupies.
    x0 = int(starts[foreground].min()) // height
    x1 = int(ends[foreground].max() - 1) // height + 1
    lo, hi = x0 * height, x1 * height
    lengths = np.clip(ends, lo, hi) - np.clip(starts, lo, hi)
    columns = np.repeat((np.arange(runs.size) % 2).astype(np.uint8), lengths).reshape(x1 - x0, height)
    rows = np.flatnonzero(columns.any(axis=0))
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    crop = cv2.transpose(columns[:, y0:y1])  # to row-major: ~9x numpy's transposing copy of uint8
    return crop, (x0, y0, x1, y1)


def panoptic_crop(ids: np.ndarray, segment: Segment) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The mask of one panoptic segment, cropped to its declared box; same contract as decode_rle_crop."""
    x, y, w, h = segment.box
    x0, y0 = int(x), int(y)
    x1, y1 = min(ids.shape[1], int(np.ceil(x + w))), min(ids.shape[0], int(np.ceil(y + h)))
    crop = (ids[y0:y1, x0:x1] == segment.segment_id).astype(np.uint8)
    inside = cv2.countNonZero(crop)
    if not inside:
        raise BadInput("empty_mask", f"segment id {segment.segment_id} has no pixels inside its bbox")
    if inside < 0.9 * segment.area:  # a box that cuts its object: a straight-edged fragment, sized by the whole's area
        raise BadInput("bbox_mismatch", f"segment id {segment.segment_id}: its bbox holds {inside} of its declared {segment.area:.0f} px")
    return crop, (x0, y0, x1, y1)


def segment_crop(segment: Segment, ids: np.ndarray | None, grid: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A segment's mask cropped to its bounds on the image's pixel grid (h, w): decoded at the size it
    was annotated at (its RLE's, or the panoptic map's), then area-scaled where the image was decoded
    smaller (``codecs.reduction``). Same contract as decode_rle_crop."""
    if ids is None:
        size = tuple(segment.rle["size"])
        crop, bounds = decode_rle_crop(segment.rle, *size)
    else:
        size = ids.shape
        crop, bounds = panoptic_crop(ids, segment)
    return (crop, bounds) if size == tuple(grid) else scale_crop(crop, bounds, size, grid)


def scale_crop(
    crop: np.ndarray, bounds: tuple[int, int, int, int], size: tuple[int, int], grid: tuple[int, int],
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A 0/1 mask crop at `bounds` of a (H, W) `size` image, carried to the (h, w) `grid`: the grid pixels it
    touches, each set where the mask covers at least half of it; tight bounds again."""
    (big_h, big_w), (h, w) = size, grid
    sy, sx = h / big_h, w / big_w
    x0, y0, x1, y1 = bounds
    gx0, gy0 = int(x0 * sx), int(y0 * sy)
    gx1, gy1 = min(w, math.ceil(x1 * sx)), min(h, math.ceil(y1 * sy))
    fx0, fy0 = round(gx0 / sx), round(gy0 / sy)  # the full-size region those grid pixels cover
    fx1, fy1 = max(x1, min(big_w, round(gx1 / sx))), max(y1, min(big_h, round(gy1 / sy)))
    region = np.zeros((fy1 - fy0, fx1 - fx0), np.uint8)
    region[y0 - fy0:y1 - fy0, x0 - fx0:x1 - fx0] = crop * np.uint8(255)
    small = cv2.resize(region, (gx1 - gx0, gy1 - gy0), interpolation=cv2.INTER_AREA) >= 128
    rows, cols = np.flatnonzero(small.any(axis=1)), np.flatnonzero(small.any(axis=0))
    if not rows.size:
        raise BadInput("empty_mask", f"mask vanishes at the decoded scale {w}x{h} of {big_w}x{big_h}")
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return small[r0:r1, c0:c1].astype(np.uint8), (gx0 + c0, gy0 + r0, gx0 + c1, gy0 + r1)
