"""Region pairs: an object in frame i paired with a frame j in which the object's neighbourhood is clean,
whatever moves elsewhere in the picture. The pair is a crop of both frames around the object.

Busy real scenes rarely have a frame with nothing moving anywhere, so whole-frame pairing (one frame of
the empty scene) finds nothing there. Per static run: the MOG2 foreground's connected parts are the
objects of each analysed frame (tiny and border-cut ones are left out, with a reason), linked over
time into tracks by box IoU. For an object: a crop box around it (its box plus a margin, a minimum
side, optionally square, clipped to the frame, and grown to hold every mover it touches, whose union
is the mask: the target crop must be clean of all of them); candidate frames whose moving pixels
inside the dilated crop stay under a threshold; the best by MSE outside the object inside the crop,
with the whole-frame checks applied to the crop (``video_pairing.pair_frame``: no stray change outside
the object, the object region did change, the two crops align). A few pairs per track, spread in time.
Everything runs at analysis resolution; the crop is scaled to full-resolution pixels when fetched.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from ..dataset import Reject
from .params import Params
from .video_mog import disk, fill_holes
from .video_pairing import Miss, Pair, PairingParams, pair_frame

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), pixels


class RegionParams(Params):
    mode: Literal["auto", "frame", "region"] = Field(
        "auto", description="frame: whole-frame pairs only (a frame of the empty scene); region: crops around each object; "
        "auto: whole frames where a run has a clean frame, region pairs for the objects of frames that found none",
    )
    margin: float = Field(0.5, ge=0, le=5, description="the crop is the object's box grown by this share of its size on each side")
    min_side: int = Field(128, ge=16, le=4096, description="crop side at least this many full-resolution pixels (clipped to the frame)")
    square: bool = Field(False, description="square crops (clipped to the frame)")
    max_side: int | None = Field(
        None, ge=32, le=8192, description="crops larger than this are downscaled to it (null: native pixels; resizing belongs to training)",
    )
    min_object: float = Field(0.002, ge=0, le=1, description="an object covers this share of the frame at least (smaller: tiny_object)")
    border: int = Field(1, ge=0, le=64, description="an object whose box comes this close to the frame edge (analysis px) is cut by it: border_cut")
    track_iou: float = Field(0.3, gt=0, le=1, description="objects of consecutive analysed frames whose boxes overlap this much are one track")
    clean_max_ratio: float = Field(
        0.002, ge=0, le=1, description="a target frame's moving pixels inside the dilated crop, share of the crop, at most",
    )
    clean_dilation: float = Field(0.1, ge=0, le=1, description="the crop is dilated by this share of its side for the clean test")
    max_pairs_per_track: int = Field(2, ge=1, le=99, description="region pairs per object track, spread in time")
    max_pairs_per_video: int = Field(64, ge=1, le=100000, description="pairs per video, at most (shared out over its segments)")


@dataclass(frozen=True)
class Blob:
    """One object (connected part of the MOG2 foreground) of one analysed frame."""

    frame: int  # position among the segment's analysed frames
    box: Box
    area: float  # share of the frame
    label: int  # its label in that frame's component map
    track: int = -1


@dataclass(frozen=True)
class RegionPair:
    """A region pair at analysis resolution: the whole-frame Pair facts, its crop, its track and its mask."""

    pair: Pair
    crop: Box
    track: int
    mask: np.ndarray  # uint8 0/1, the crop's size: every mover the crop holds in the source frame


def components(objects: np.ndarray) -> tuple[np.ndarray, list[tuple[int, Box, int]]]:
    """Label map of a 0/1 object mask and its parts as (label, box, pixel count)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(objects, connectivity=8)
    parts = [(k, (int(stats[k, 0]), int(stats[k, 1]), int(stats[k, 0] + stats[k, 2]), int(stats[k, 1] + stats[k, 3])), int(stats[k, 4]))
             for k in range(1, count)]
    return labels, parts


def box_iou(a: Box, b: Box) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def find_blobs(masks: dict[int, np.ndarray], params: RegionParams) -> tuple[list[Blob], dict[int, tuple], Counter]:
    """The objects of each frame (tiny and border-cut ones counted by reason), with their tracks, and each
    frame's components (label map, parts)."""
    blobs, maps, left_out = [], {}, Counter()
    for frame in sorted(masks):
        labels, parts = components(fill_holes(masks[frame]))
        maps[frame] = labels, parts
        height, width = labels.shape
        for label, box, pixels in parts:
            area = pixels / labels.size
            if area < params.min_object:
                left_out["tiny_object"] += 1
            elif box[0] < params.border or box[1] < params.border or box[2] > width - params.border or box[3] > height - params.border:
                left_out["border_cut"] += 1
            else:
                blobs.append(Blob(frame, box, area, label))
    return link_tracks(blobs, params.track_iou), maps, left_out


def link_tracks(blobs: list[Blob], min_iou: float) -> list[Blob]:
    """Greedy IoU matching of each frame's objects with the previous frame's: one track id per object path."""
    linked: list[Blob] = []
    previous: list[Blob] = []
    next_id = 0
    for frame in sorted({b.frame for b in blobs}):
        current = [b for b in blobs if b.frame == frame]
        scores = sorted(((box_iou(c.box, p.box), i, j) for i, c in enumerate(current) for j, p in enumerate(previous)), reverse=True)
        assigned: dict[int, int] = {}
        taken: set[int] = set()
        for iou, i, j in scores:
            if iou >= min_iou and i not in assigned and j not in taken:
                assigned[i], _ = previous[j].track, taken.add(j)
        out = []
        for i, blob in enumerate(current):
            track = assigned.get(i)
            if track is None:
                track, next_id = next_id, next_id + 1
            out.append(Blob(blob.frame, blob.box, blob.area, blob.label, track))
        linked += out
        previous = out
    return linked


def crop_box(box: Box, shape: tuple[int, int], scale: float, params: RegionParams) -> Box:
    """The object's box grown by the margin, to the minimum side (full-resolution pixels / `scale`), square if asked, clipped."""
    height, width = shape
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    side = params.min_side / scale
    w2, h2 = max(w * (1 + 2 * params.margin), side), max(h * (1 + 2 * params.margin), side)
    if params.square:
        w2 = h2 = max(w2, h2)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return _clip((round(cx - w2 / 2), round(cy - h2 / 2), round(cx + w2 / 2), round(cy + h2 / 2)), width, height)


def _clip(box: Box, width: int, height: int) -> Box:
    """Shift a box into the frame where it fits, and cut it where it does not."""
    x0, y0, x1, y1 = box
    dx = max(0, -x0) - max(0, x1 - width)
    dy = max(0, -y0) - max(0, y1 - height)
    x0, x1, y0, y1 = x0 + dx, x1 + dx, y0 + dy, y1 + dy
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def movers_in(crop: Box, labels: np.ndarray, parts: list[tuple[int, Box, int]]) -> tuple[Box, np.ndarray] | Reject:
    """The crop grown to hold every mover it touches (their union is the mask), or why it cannot; `labels` and
    `parts` are the frame's object components (``components``)."""
    for _ in range(3):  # growing can touch new movers: a few rounds
        x0, y0, x1, y1 = crop
        touched = {k for k in np.unique(labels[y0:y1, x0:x1]) if k}
        boxes = [b for k, b, _ in parts if k in touched]
        grown = (min([x0, *(b[0] for b in boxes)]), min([y0, *(b[1] for b in boxes)]),
                 max([x1, *(b[2] for b in boxes)]), max([y1, *(b[3] for b in boxes)]))
        if grown == crop:
            mask = np.isin(labels[y0:y1, x0:x1], list(touched)).astype(np.uint8)
            return crop, mask
        crop = grown
    return Reject.because("movers_overlap", "other moving objects keep touching the crop around this one")


class MoverCounts:
    """Moving pixels of every frame of a run inside any box, in O(1) per box: stacked integral images."""

    def __init__(self, moving: dict[int, np.ndarray]):
        self.frames = np.array(sorted(moving))
        self.sums = np.stack([cv2.integral(moving[f]) for f in self.frames])  # (frames, H + 1, W + 1)

    def inside(self, box: Box) -> np.ndarray:
        x0, y0, x1, y1 = box
        s = self.sums
        return s[:, y1, x1] - s[:, y0, x1] - s[:, y1, x0] + s[:, y0, x0]


def clean_frames(crop: Box, counts: MoverCounts, params: RegionParams) -> list[int]:
    """Frames whose moving pixels inside the dilated crop stay under clean_max_ratio of the crop."""
    x0, y0, x1, y1 = crop
    pad = round(params.clean_dilation * max(x1 - x0, y1 - y0))
    height, width = counts.sums.shape[1] - 1, counts.sums.shape[2] - 1
    box = (max(0, x0 - pad), max(0, y0 - pad), min(width, x1 + pad), min(height, y1 + pad))
    limit = params.clean_max_ratio * (box[2] - box[0]) * (box[3] - box[1])
    return [int(f) for f in counts.frames[counts.inside(box) <= limit]]


def pair_regions(
    run_frames: list[int], frames: list[np.ndarray], greys: list[np.ndarray], objects: dict[int, np.ndarray],
    moving: dict[int, np.ndarray], shadows: dict[int, np.ndarray], displacement: np.ndarray, full_width: int,
    times: list[float], skip: set[int], params: RegionParams, pairing: PairingParams,
) -> tuple[list[RegionPair], list[Reject]]:
    """Region pairs of one static run (frames at analysis resolution; `skip`: frames already paired whole)."""
    masks = {f: objects[f] for f in run_frames if f not in skip}
    blobs, parts, left_out = find_blobs(masks, params)
    counts = MoverCounts({f: moving[f] for f in run_frames})
    height, width = frames[0].shape[:2]
    scale = full_width / width
    found: list[RegionPair] = []
    misses: Counter = Counter(left_out)
    details: dict[str, str] = {}
    for blob in spread_over_tracks(blobs, TRIES_PER_PAIR * params.max_pairs_per_track):
        grown = movers_in(crop_box(blob.box, (height, width), scale, params), *parts[blob.frame])
        if isinstance(grown, Reject):
            misses[grown.reason] += 1
            details[grown.reason] = grown.detail
            continue
        crop, mask = grown
        clean = [f for f in clean_frames(crop, counts, params) if f != blob.frame]
        if not clean:
            misses["no_clean_frame"] += 1
            details["no_clean_frame"] = "every other frame of the run has movers inside the crop"
            continue
        x0, y0, x1, y1 = crop
        cut = lambda images: [im[y0:y1, x0:x1] for im in images]  # noqa: E731  (views: no copies)
        shadow = shadows[blob.frame][y0:y1, x0:x1]
        outcome = pair_frame(blob.frame, cut(frames), cut(greys), mask, shadow, clean, displacement, full_width * (x1 - x0) / width, pairing)
        if isinstance(outcome, Miss):
            misses[outcome.reject.reason] += 1
            details[outcome.reject.reason] = outcome.reject.detail
            continue
        found.append(RegionPair(outcome, crop, blob.track, mask))
    rejects = [Reject.because(reason, f"{count} objects; {details.get(reason, 'left out by the region rules')}")
               for reason, count in misses.most_common()] if not found else []
    return select_regions(found, times, params, pairing), rejects


TRIES_PER_PAIR = 4  # objects tried per pair a track may keep: the rest of a track are near-duplicates of those


def spread_over_tracks(blobs: list[Blob], per_track: int) -> list[Blob]:
    """At most `per_track` objects of each track, evenly spread over its frames (the first and the last kept)."""
    tracks: dict[int, list[Blob]] = {}
    for blob in blobs:
        tracks.setdefault(blob.track, []).append(blob)
    chosen = []
    for members in tracks.values():
        members.sort(key=lambda b: b.frame)
        picks = np.unique(np.linspace(0, len(members) - 1, min(per_track, len(members))).round().astype(int))
        chosen += [members[i] for i in picks]
    return sorted(chosen, key=lambda b: (b.frame, b.box))


def select_regions(pairs: list[RegionPair], times: list[float], params: RegionParams, pairing: PairingParams) -> list[RegionPair]:
    """Best pairs first (lowest MSE): a few per track, min_gap_seconds apart, and never two overlapping crops of one frame."""
    kept: list[RegionPair] = []
    per_track: Counter = Counter()
    for candidate in sorted(pairs, key=lambda r: (r.pair.mse, r.pair.source, r.crop)):
        same_track = [k for k in kept if k.track == candidate.track]
        if per_track[candidate.track] >= params.max_pairs_per_track:
            continue
        if any(abs(times[candidate.pair.source] - times[k.pair.source]) < pairing.min_gap_seconds for k in same_track):
            continue
        if any(k.pair.source == candidate.pair.source and box_iou(k.crop, candidate.crop) > 0 for k in kept):
            continue
        kept.append(candidate)
        per_track[candidate.track] += 1
    return sorted(kept, key=lambda r: (r.pair.source, r.crop))
