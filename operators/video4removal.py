"""Video4Removal per segment: real (object, no object) pairs from static-camera video.

A long video is split into fixed-length segments (``split_video``) that are processed
independently. For one segment: decode every ``stride``-th frame at analysis resolution, screen
it into static runs (camera motion, cuts, flicker), find background and foreground frames with
MOG2 in each run, pair each foreground frame with its best background frame, keep a diverse few,
decode just those frames at full resolution, mask them (``masker``) and encode WebDataset samples
in the Syn4Removal layout (source = frame with the object, target = the same scene without it).
Whatever yields no pair leaves a ``Reject`` that says why, so nothing is lost silently and no
misaligned pair is ever written.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Annotated, ClassVar, NamedTuple, Sequence, Union

import cv2
import numpy as np
from pydantic import Discriminator, Field, Tag

from .. import __version__
from ..dataset import Reject, sample_json, sample_key
from .codecs import BadInput, encode_jpeg, encode_png_gray
from .gdino_sam2 import GdinoSam2MaskerParams
from .maskers import Masker, MaskInput, MaskResult, MogMasker
from .model_stage import process
from .params import Params
from .quality import FrameQualityParams, bounding_window, frame_signals, perceptual_hash, quality_reject
from .stats import Stats
from .video_io import DecodeParams, Frame, Source, VideoInfo, analysis_size, deinterlace, probe, read_frames, reader_order
from .video_mog import MogParams, classify, disk, subtract_background
from .video_pairing import Miss, Pair, PairingParams, pair_frame, select_diverse
from .video_regions import Box, RegionParams, pair_regions
from .video_screen import Screening, ScreenParams, Span, screen

PIPELINE = "video4removal"

log = logging.getLogger(__name__)


def _masker_name(value) -> str:
    """The masker a config names; without a name, the default one (so `--set masker.x=...` works)."""
    return value.get("name", "mog") if isinstance(value, dict) else value.name


class EffectParams(Params):
    """effect_mask.png: the object plus what it does to the scene (shadow, reflection), from the pair's difference."""

    threshold: int = Field(25, ge=1, le=255, description="a pixel differs when a blurred channel differs by more")
    near: float = Field(0.5, ge=0, le=5, description="differences count within this share of the object's size around it")


class Video4RemovalParams(Params):
    """Everything that decides the pairs (hashed into ``config_hash`` and every sample key)."""

    segment_seconds: float = Field(
        30.0, gt=0, le=3600, description="videos are cut into segments of about this length, processed in parallel",
    )
    jpeg_quality: int = Field(95, ge=50, le=100, description="quality of the source/target JPEGs")
    decode: DecodeParams = Field(default_factory=DecodeParams)
    screen: ScreenParams = Field(default_factory=ScreenParams)
    mog: MogParams = Field(default_factory=MogParams)
    pairing: PairingParams = Field(default_factory=PairingParams)
    region: RegionParams = Field(default_factory=RegionParams)
    effect: EffectParams = Field(default_factory=EffectParams)
    quality: FrameQualityParams = Field(default_factory=FrameQualityParams)
    masker: Annotated[
        Union[Annotated[MogMasker, Tag("mog")], Annotated[GdinoSam2MaskerParams, Tag("gdino_sam2")]],
        Discriminator(_masker_name),
    ] = Field(default_factory=MogMasker, description="object masker, chosen by `name`: mog (CPU) or gdino_sam2")


def split_video(info: VideoInfo, params: Video4RemovalParams) -> list[tuple[int, int]]:
    """Frame ranges [start, stop) of about ``segment_seconds`` each, covering the video (no short tail)."""
    per_segment = max(1, round(params.segment_seconds * info.fps))
    count = max(1, round(info.frames / per_segment))
    bounds = [round(k * info.frames / count) for k in range(count + 1)]
    return list(zip(bounds, bounds[1:]))


@dataclass(frozen=True)
class Candidate:
    """A selected pair awaiting its mask: full-resolution frames and what the analysis found."""

    source: Frame
    target: Frame
    prior: np.ndarray  # MOG2 object mask at analysis resolution
    meta: dict  # analysis facts for the sample's json
    frame_size: tuple[int, int]  # (width, height) of the frames the pair was cut from (a region pair's are crops)

    def mask_input(self, with_target: bool = True) -> MaskInput:
        return MaskInput(self.source.image, self.target.image if with_target else None, self.prior, whole_frame="crop" not in self.meta)


@dataclass
class SegmentWork:
    """One segment between the analysis and the masking/encoding stages."""

    video_id: str
    start: int
    stop: int
    info: VideoInfo | None = None
    reader: str = ""
    candidates: list[Candidate] = field(default_factory=list)
    results: list[MaskResult] = field(default_factory=list)  # one per candidate, once masked
    rejects: list[Reject] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    model: dict | None = None  # the masker's provenance (device, precision) when it is a model, for each sample's json

    @property
    def unit(self) -> str:
        return self.video_id

    def reject(self, first: int, stop: int, stage: str, why: Reject) -> None:
        """Frames [first, stop) yield nothing at `stage`, for the reason `why` gives."""
        self.rejects.append(why.at(f"{self.video_id}#{first}-{stop}", stage))


@dataclass(frozen=True)
class Choice:
    """A selected pair at analysis resolution: a whole-frame pair, or a region pair with its crop."""

    pair: Pair
    prior: np.ndarray  # uint8 0/1 object mask: the frame's, or the crop's
    meta: dict
    crop: Box | None = None  # analysis pixels; None: the whole frame


def _pair_run(
    work: SegmentWork, run: Span, frames: list[Frame], greys: list[np.ndarray], screening: Screening, span: tuple[int, int],
    params: Video4RemovalParams,
) -> list[Choice]:
    """MOG2 and pairing inside one static run: whole-frame pairs and/or region pairs (``region.mode``); a reject
    that says why when the run yields none."""
    stats, mode = work.stats, params.region.mode
    with stats.timed("mog"):
        labels = subtract_background([f.image for f in frames[run.first : run.stop]], params.mog)
        classes = {run.first + i: classify(label, params.mog) for i, label in enumerate(labels)}
    backgrounds = [p for p, c in classes.items() if c.kind == "background"]
    foregrounds = {p: c for p, c in classes.items() if c.kind == "foreground"}
    stats.counts["bg_frames"] += len(backgrounds)
    stats.counts["fg_frames"] += len(foregrounds)
    images, times = [f.image for f in frames], [f.time for f in frames]
    motion = float(f"{float(np.median(screening.steps.motion[run.first : run.stop - 1])):.3e}")
    whole: list[Pair] = []
    why = None
    if mode != "region":
        if not backgrounds:
            least = min(c.moving for c in classes.values())
            why = Reject.because("no_background_frame", f"every frame has moving pixels: least {least:.4f} of a frame "
                                                        f"> background_max_ratio={params.mog.background_max_ratio}")
        elif not foregrounds:
            kinds = Counter(c.kind for c in classes.values())
            why = Reject.because("no_foreground_frame", f"{kinds['background']} background frames, {kinds['neither']} "
                                                        "with moving pixels but no object in range")
        else:
            with stats.timed("pair"):
                outcomes = [pair_frame(p, images, greys, c.mask, c.shadow, backgrounds, screening.displacement, work.info.width,
                                       params.pairing) for p, c in foregrounds.items()]
            whole = [o for o in outcomes if isinstance(o, Pair)]
            misses = [o for o in outcomes if isinstance(o, Miss)]
            if not whole:
                reason, count = Counter(m.reject.reason for m in misses).most_common(1)[0]
                best = min((m for m in misses if m.reject.reason == reason), key=lambda m: m.mse)
                why = Reject.because(reason, f"{count} of {len(misses)} foreground frames; the best: {best.reject.detail}")
    stats.counts["pair_candidates"] += len(whole)
    with stats.timed("pair"):
        chosen = select_diverse(whole, {p: c.mask for p, c in foregrounds.items()}, times, params.pairing)
    choices = [Choice(p, foregrounds[p.source].mask, {"mode": "frame", "foreground_ratio": round(foregrounds[p.source].area, 5),
                                                      "objects": foregrounds[p.source].objects, "motion": motion}) for p in chosen]
    if mode != "frame" and (mode == "region" or not whole):  # auto: regions when the run has no whole-frame pair
        with stats.timed("pair"):
            regions, region_rejects = pair_regions(
                list(range(run.first, run.stop)), images, greys, {p: c.mask for p, c in classes.items()},
                {p: c.movers for p, c in classes.items()}, {p: c.shadow for p, c in classes.items()}, screening.displacement,
                work.info.width, times, {p.source for p in whole}, params.region, params.pairing,
            )
        stats.counts["region_candidates"] += len(regions)
        choices += [Choice(r.pair, r.mask, {"mode": "region", "track": r.track, "motion": motion,
                                            "foreground_ratio": round(float(r.mask.mean()), 5)}, r.crop) for r in regions]
        if not regions and region_rejects:
            top = region_rejects[0]
            why = Reject.because(top.reason, top.detail + (f"; and no whole-frame pair: {why.reason}" if why else ""))
    if not choices and why:
        work.reject(*span, "pair" if why.reason not in ("no_background_frame", "no_foreground_frame") else "mog", why)
    return choices


def _decode_analysis(work: SegmentWork, source: Source, start: int, stop: int, decode: DecodeParams) -> tuple[list[Frame], int]:
    """The segment's sampled frames at analysis resolution and the end of what they cover; rejects for the rest."""
    try:
        work.info = info = probe(source, decode)
    except BadInput as bad:
        work.reject(start, stop, "read", bad.reject)
        return [], start
    stop = min(stop, info.frames)
    wanted = list(range(start, stop, decode.stride))
    if len(wanted) < 2 or stop - start < decode.min_frames:
        work.reject(start, stop, "read", Reject.because("too_short", f"segment has {max(0, stop - start)} frames < min_frames={decode.min_frames}"))
        return [], start
    size = analysis_size(info.width, info.height, decode.analysis_long_side)
    decoded = read_frames(source, wanted, reader_order(decode), size, decode.threads)
    work.reader = decoded.reader
    work.stats.counts[f"reader_{decoded.reader}"] += 1
    frames = decoded.frames if len(decoded.frames) >= 2 else []
    short = wanted[-1] - frames[-1].index if frames else 0
    if not decoded.error and frames and 0 < short <= max(decode.stride, info.fps):
        # a header's count a second or less too high (an edit list's dropped lead-in, B-frame delay in FLV, audio
        # outlasting an MKV's video, a variable rate's rounding): the stream's end, not a cut
        work.stats.counts["frames_short_of_header"] += short
        short = 0
    if decoded.error or not frames or short > 0:
        error = decoded.error or BadInput("truncated_video", f"the stream ends before frame {wanted[-1]} of {info.frames}")
        tried = f" (also tried {'; '.join(decoded.failed)})" if decoded.failed else ""
        end = frames[-1].index + 1 if frames else start
        work.reject(end, stop, "decode", Reject.because(error.reason, f"{decoded.reader}: {error.detail}{tried}"))
        return frames, end
    return frames, stop


def analyse_segment(
    video_id: str, source: Source, start: int, stop: int, params: Video4RemovalParams, segments: int = 1,
) -> SegmentWork:
    """Everything up to the masks: the segment's selected pairs with their full-resolution frames (or crops), and
    rejects. `segments`: how many segments share the video's max_pairs_per_video. Footage that breaks an
    operator in a way no check foresaw makes the whole segment one `unexpected_error` reject, not the job's end."""
    try:
        return _analyse_segment(video_id, source, start, stop, params, segments)
    except Exception as exc:
        log.warning("%s#%d-%d: unexpected %s while analysing it", video_id, start, stop, type(exc).__name__, exc_info=True)
        work = SegmentWork(video_id, start, stop)
        work.stats.counts["segments"] += 1
        work.reject(start, stop, "analyse", Reject.unexpected(exc))
        return work


def _analyse_segment(video_id: str, source: Source, start: int, stop: int, params: Video4RemovalParams, segments: int) -> SegmentWork:
    work = SegmentWork(video_id, start, stop)
    stats = work.stats
    stats.counts["segments"] += 1
    with stats.timed("decode"):
        frames, end = _decode_analysis(work, source, start, stop, params.decode)
    stats.counts["frames"] += len(frames)
    if not frames:
        return work
    with stats.timed("screen"):
        greys = [cv2.cvtColor(f.image, cv2.COLOR_BGR2GRAY) for f in frames]
        screening = screen(greys, [f.index for f in frames], work.info.fps, work.info.width, params.screen)
    stats.counts["static_segments"] += len(screening.runs)
    bounds = [f.index for f in frames] + [end]  # samples [a, b) stand for frames [bounds[a], bounds[b])
    for span in screening.dropped:
        work.reject(bounds[span.first], bounds[span.stop], "screen", span.reject)
    choices = [c for run in screening.runs
               for c in _pair_run(work, run, frames, greys, screening, (bounds[run.first], bounds[run.stop]), params)]
    cap = min(params.pairing.max_pairs, math.ceil(params.region.max_pairs_per_video / max(1, segments)))
    chosen = sorted(choices, key=lambda c: (c.pair.mse, c.pair.source))[:cap]  # the segment's share of the video's pairs
    stats.counts["pairs_selected"] += len(chosen)
    if chosen:
        work.candidates = _fetch(work, source, sorted(chosen, key=lambda c: c.pair.source), frames, params)
    return work


def _fetch(work: SegmentWork, source: Source, chosen: list[Choice], frames: list[Frame], params: Video4RemovalParams) -> list[Candidate]:
    """Decode the chosen pairs' frames at full resolution (with the reader that did the analysis); region
    pairs keep their crop, scaled to full-resolution pixels (and down to region.max_side when set)."""
    needed = sorted({frames[p].index for c in chosen for p in (c.pair.source, c.pair.target)})
    with work.stats.timed("decode"):
        full = read_frames(source, needed, (work.reader,), None, params.decode.threads)
    work.stats.counts["full_frames"] += len(full.frames)
    by_index = {f.index: f for f in full.frames}
    if params.decode.deinterlace:
        woven = [i for i, f in by_index.items() if f.interlaced]
        by_index |= {i: replace(by_index[i], image=deinterlace(by_index[i].image)) for i in woven}
        work.stats.counts["deinterlaced_frames"] += len(woven)
    analysed = frames[0].image.shape[:2]  # every frame was read at this size, whatever its own
    candidates = []
    for choice in chosen:
        pair = choice.pair
        src, tgt = frames[pair.source].index, frames[pair.target].index
        if src not in by_index or tgt not in by_index:
            error = full.error or BadInput("decode_error", "frame missing on the full-resolution read")
            work.reject(src, src + 1, "decode", error.reject)
            continue
        meta = {"mse": round(pair.mse, 3), "changed": round(pair.changed, 4), "shift_px": round(pair.shift, 3), **choice.meta}
        source_frame, target_frame = by_index[src], by_index[tgt]
        shape = source_frame.image.shape[:2]
        if target_frame.image.shape[:2] != shape:  # a stream that changes size between the two (a TS re-encoded mid-way)
            work.reject(src, src + 1, "decode", Reject.because(
                "resolution_change", f"the pair's frames are {shape[1]}x{shape[0]} and {target_frame.image.shape[1]}x{target_frame.image.shape[0]}"))
            continue
        if choice.crop is not None:  # scaled by the frame's own size: the header's is the stream's first
            box = _full_resolution(choice.crop, (shape[1] / analysed[1], shape[0] / analysed[0]), shape)
            meta["crop"] = list(box)
            source_frame, target_frame = (_cropped(f, box, params.region.max_side) for f in (source_frame, target_frame))
        candidates.append(Candidate(source_frame, target_frame, choice.prior, meta, (shape[1], shape[0])))
    return candidates


def _full_resolution(box: Box, scale: tuple[float, float], shape: tuple[int, int]) -> Box:
    """An analysis-grid box in the pixels of a frame of `shape`, `scale` = (x, y) full-resolution px per analysis px."""
    height, width = shape
    (x0, x1), (y0, y1) = ((round(v * scale[0]) for v in box[::2]), (round(v * scale[1]) for v in box[1::2]))
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def _cropped(frame: Frame, box: Box, max_side: int | None) -> Frame:
    x0, y0, x1, y1 = box
    image = np.ascontiguousarray(frame.image[y0:y1, x0:x1])
    if max_side and max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    return replace(frame, image=image)


def effect_mask(source: np.ndarray, target: np.ndarray, mask: np.ndarray, params: EffectParams) -> np.ndarray:
    """The object and what it does to the scene (shadow, reflection): pixels where the pair differs by more than
    `threshold`, within `near` of its box size of the object (Euclidean), specks opened away; 0/255, the mask's
    size. Worked out on the object's box grown by that reach (+2 px, the blur's), where every pixel it can
    keep and every pixel they read lies, with a distance transform: a disk dilation of that radius costs
    ~r^2 per pixel (1 s for r = 200 px at 720p)."""
    rows, cols = bounding_window(mask)
    reach = max(1, round(params.near * max(rows.stop - rows.start, cols.stop - cols.start)))
    rows, cols = bounding_window(mask, reach + 2)
    outside = (mask[rows, cols] == 0).astype(np.uint8)
    near = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= reach
    blurred = (cv2.GaussianBlur(np.ascontiguousarray(image[rows, cols]), (5, 5), 0) for image in (source, target))
    differs = cv2.absdiff(*blurred).max(axis=2) > params.threshold
    effect = np.zeros(mask.shape, np.uint8)
    effect[rows, cols] = cv2.morphologyEx((differs & near).astype(np.uint8), cv2.MORPH_OPEN, disk(1))
    return ((effect > 0) | (mask > 0)).astype(np.uint8) * np.uint8(255)


def _invalid_mask(mask: np.ndarray, shape: tuple[int, int]) -> str:
    """What breaks the sample invariants (a single-channel uint8 mask of the frame's size, neither empty nor full)."""
    if mask.dtype != np.uint8 or mask.shape != shape:
        return f"mask is {mask.dtype} {mask.shape}, the frame {shape}"
    on = cv2.countNonZero(mask)
    if on in (0, mask.size):
        return "mask is empty" if on == 0 else "mask is full"
    return ""


class Masked(NamedTuple):
    """A segment's output of the masking step: one result per candidate, and the masker's provenance."""

    results: list[MaskResult]
    model: dict | None


@dataclass(frozen=True)
class SegmentMasking:
    """Video4Removal's masking step: the masker on the candidates of several segments, in one ``masks()`` call
    when its items are independent, one call per segment when they form a clip (SAM2 propagation)."""

    params: MogMasker | GdinoSam2MaskerParams
    items_per_call: int = 2  # segments whose candidates one call takes together
    name: ClassVar[str] = "mask"

    def inputs(self, work: SegmentWork) -> list[MaskInput]:
        """The candidates' frames and MOG2 masks (the target frames only for a masker that reads them). The source
        frames stay in the parked segment too (encoding needs them): the object store holds them twice meanwhile."""
        return [c.mask_input(self.params.needs_target) for c in work.candidates]

    def run(self, masker: Masker, clips: Sequence[list[MaskInput]]) -> list[Masked]:
        if masker.items_are_clip:
            grouped = [masker.masks(clip) if clip else [] for clip in clips]
        else:
            flat = masker.masks([item for clip in clips for item in clip])
            bounds = np.cumsum([0, *map(len, clips)])
            grouped = [flat[start:stop] for start, stop in zip(bounds, bounds[1:])]
        provenance = getattr(masker, "provenance", None)
        return [Masked(list(results), provenance) for results in grouped]

    def apply(self, work: SegmentWork, output: Masked) -> None:
        work.results, work.model = output.results, output.model
        work.stats.counts["masked"] += len(output.results)


def encode_samples(work: SegmentWork, masker_name: str, params: Video4RemovalParams, config_hash: str) -> list[dict]:
    """WebDataset samples of the masked candidates; the others become rejects."""
    samples = []
    record = f"{work.video_id}#{work.start}-{work.stop}"
    with work.stats.timed("encode"):
        for candidate, result in zip(work.candidates, work.results, strict=True):
            source, target = candidate.source, candidate.target
            if result.mask is None:
                work.reject(source.index, source.index + 1, "mask", result.reject)
                continue
            problem = _invalid_mask(result.mask, source.image.shape[:2])
            if problem:
                work.reject(source.index, source.index + 1, "mask", Reject.because("invalid_mask", f"{masker_name}: {problem}"))
                continue
            effect = effect_mask(source.image, target.image, result.mask, params.effect)
            signals = frame_signals(source.image, target.image, np.maximum(result.mask, effect))
            rejected = quality_reject(signals, params.quality)
            if rejected:
                work.reject(source.index, source.index + 1, "quality", rejected)
                continue
            key = sample_key(record, config_hash, len(samples))
            meta = {
                "pipeline": PIPELINE,
                "key": key,
                "video": work.video_id,
                "segment": [work.start, work.stop],
                "source": {"frame": source.index, "time": round(source.time, 4)},
                "target": {"frame": target.index, "time": round(target.time, 4)},
                **candidate.meta,
                "mask_ratio": round(cv2.countNonZero(result.mask) / result.mask.size, 5),
                "effect_ratio": round(cv2.countNonZero(effect) / effect.size, 5),
                "quality": signals,
                "phash": perceptual_hash(source.image, result.mask),
                "masker": masker_name,
                **({"model": work.model} if work.model else {}),
                "reader": work.reader,
                # the frames' own size and turn (a stream may change size mid-way); they are written as stored
                "video_info": work.info.to_dict() | {"width": candidate.frame_size[0], "height": candidate.frame_size[1],
                                                     "rotation": source.rotation, "interlaced": source.interlaced},
                "config_hash": config_hash,
                "version": __version__,
            }
            samples.append(
                {
                    "__key__": key,
                    "source.jpg": encode_jpeg(source.image, params.jpeg_quality),
                    "target.jpg": encode_jpeg(target.image, params.jpeg_quality),
                    "mask.png": encode_png_gray(result.mask),
                    "effect_mask.png": encode_png_gray(effect),
                    "json": sample_json(meta),
                }
            )
    work.stats.counts["pairs"] += len(samples)
    return samples


def process_segment(
    video_id: str, source: Source, start: int, stop: int, params: Video4RemovalParams, config_hash: str,
    masker: Masker | None = None,
) -> tuple[list[dict], list[Reject], Stats]:
    """Samples, rejects and stats of frames [start, stop) of one video.

    ``source`` is a path or a zero-argument callable returning a fresh binary file-like: the video
    is opened twice (analysis, then the selected frames at full resolution). ``masker`` defaults
    to ``params.masker``; pass a loaded model-based masker to reuse it across segments.
    """
    masker = masker or params.masker.build()
    work = analyse_segment(video_id, source, start, stop, params)
    with work.stats.timed(SegmentMasking.name):
        process(SegmentMasking(params.masker), masker, work)
    samples = encode_samples(work, masker.name, params, config_hash)
    return samples, work.rejects, work.stats
