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

from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Sequence, Union

import cv2
import numpy as np
from pydantic import Discriminator, Field, Tag

from .. import __version__
from ..dataset import Reject, sample_json, sample_key
from .codecs import BadInput, encode_jpeg, encode_png_gray
from .gdino_sam2 import GdinoSam2MaskerParams
from .maskers import Masker, MaskInput, MaskResult, MogMasker
from .params import Params
from .stats import Stats
from .video_io import DecodeParams, Frame, Source, VideoInfo, analysis_size, probe, read_frames, reader_order
from .video_mog import FrameClass, MogParams, classify, subtract_background
from .video_pairing import Miss, Pair, PairingParams, pair_frame, select_diverse
from .video_screen import Screening, ScreenParams, Span, screen

PIPELINE = "video4removal"


def _masker_name(value) -> str:
    """The masker a config names; without a name, the default one (so `--set masker.x=...` works)."""
    return value.get("name", "mog") if isinstance(value, dict) else value.name


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

    def mask_input(self) -> MaskInput:
        return MaskInput(self.source.image, self.target.image, self.prior)


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

    def reject(self, first: int, stop: int, stage: str, why: Reject) -> None:
        """Frames [first, stop) yield nothing at `stage`, for the reason `why` gives."""
        self.rejects.append(why.at(f"{self.video_id}#{first}-{stop}", stage))


def _pair_run(
    work: SegmentWork, run: Span, frames: list[Frame], greys: list[np.ndarray], screening: Screening, span: tuple[int, int],
    params: Video4RemovalParams,
) -> tuple[list[Pair], dict[int, FrameClass]]:
    """MOG2 and pairing inside one static run: its pairs and foreground frames; a reject when it yields no pair."""
    stats = work.stats
    with stats.timed("mog"):
        labels = subtract_background([f.image for f in frames[run.first : run.stop]], params.mog)
        classes = {run.first + i: classify(label, params.mog) for i, label in enumerate(labels)}
    backgrounds = [p for p, c in classes.items() if c.kind == "background"]
    foregrounds = {p: c for p, c in classes.items() if c.kind == "foreground"}
    stats.counts["bg_frames"] += len(backgrounds)
    stats.counts["fg_frames"] += len(foregrounds)
    if not backgrounds:
        least = min(c.moving for c in classes.values())
        work.reject(*span, "mog", Reject.because("no_background_frame", f"every frame has moving pixels: least {least:.4f} of a "
                                                 f"frame > background_max_ratio={params.mog.background_max_ratio}"))
        return [], foregrounds
    if not foregrounds:
        kinds = Counter(c.kind for c in classes.values())
        work.reject(*span, "mog", Reject.because(
            "no_foreground_frame", f"{kinds['background']} background frames, {kinds['neither']} with moving pixels but no object in range"))
        return [], foregrounds
    with stats.timed("pair"):
        images = [f.image for f in frames]
        outcomes = [
            pair_frame(p, images, greys, c.mask, c.shadow, backgrounds, screening.displacement, work.info.width, params.pairing)
            for p, c in foregrounds.items()
        ]
    pairs = [o for o in outcomes if isinstance(o, Pair)]
    misses = [o for o in outcomes if isinstance(o, Miss)]
    stats.counts["pair_candidates"] += len(pairs)
    if not pairs:
        reason, count = Counter(m.reject.reason for m in misses).most_common(1)[0]
        best = min((m for m in misses if m.reject.reason == reason), key=lambda m: m.mse)
        work.reject(*span, "pair", Reject.because(reason, f"{count} of {len(misses)} foreground frames; the best: {best.reject.detail}"))
    return pairs, foregrounds


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
    if decoded.error or not frames or frames[-1].index < wanted[-1]:
        error = decoded.error or BadInput("truncated_video", f"the stream ends before frame {wanted[-1]} of {info.frames}")
        tried = f" (also tried {'; '.join(decoded.failed)})" if decoded.failed else ""
        end = frames[-1].index + 1 if frames else start
        work.reject(end, stop, "decode", Reject.because(error.reason, f"{decoded.reader}: {error.detail}{tried}"))
        return frames, end
    return frames, stop


def analyse_segment(video_id: str, source: Source, start: int, stop: int, params: Video4RemovalParams) -> SegmentWork:
    """Everything up to the masks: the segment's selected pairs with their full-resolution frames, and rejects."""
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
    pairs, foregrounds, motion = [], {}, {}
    for run in screening.runs:
        run_pairs, run_foregrounds = _pair_run(work, run, frames, greys, screening, (bounds[run.first], bounds[run.stop]), params)
        pairs += run_pairs
        foregrounds.update(run_foregrounds)
        motion.update({p.source: float(np.median(screening.steps.motion[run.first : run.stop - 1])) for p in run_pairs})
    with stats.timed("pair"):
        chosen = select_diverse(pairs, {p: c.mask for p, c in foregrounds.items()}, [f.time for f in frames], params.pairing)
    stats.counts["pairs_selected"] += len(chosen)
    if chosen:
        work.candidates = _fetch(work, source, chosen, frames, foregrounds, motion, params.decode.threads)
    return work


def _fetch(
    work: SegmentWork, source: Source, chosen: list[Pair], frames: list[Frame], foregrounds: dict[int, FrameClass],
    motion: dict[int, float], threads: int,
) -> list[Candidate]:
    """Decode the chosen pairs' frames at full resolution, with the reader that did the analysis."""
    needed = sorted({frames[p].index for pair in chosen for p in (pair.source, pair.target)})
    with work.stats.timed("decode"):
        full = read_frames(source, needed, (work.reader,), None, threads)
    work.stats.counts["full_frames"] += len(full.frames)
    by_index = {f.index: f for f in full.frames}
    candidates = []
    for pair in chosen:
        src, tgt = frames[pair.source].index, frames[pair.target].index
        if src not in by_index or tgt not in by_index:
            error = full.error or BadInput("decode_error", "frame missing on the full-resolution read")
            work.reject(src, src + 1, "decode", error.reject)
            continue
        fg = foregrounds[pair.source]
        meta = {"mse": round(pair.mse, 3), "changed": round(pair.changed, 4), "shift_px": round(pair.shift, 3),
                "foreground_ratio": round(fg.area, 5), "objects": fg.objects, "motion": float(f"{motion[pair.source]:.3e}")}
        candidates.append(Candidate(by_index[src], by_index[tgt], fg.mask, meta))
    return candidates


def _invalid_mask(mask: np.ndarray, shape: tuple[int, int]) -> str:
    """What breaks the sample invariants (a single-channel uint8 mask of the frame's size, neither empty nor full)."""
    if mask.dtype != np.uint8 or mask.shape != shape:
        return f"mask is {mask.dtype} {mask.shape}, the frame {shape}"
    on = cv2.countNonZero(mask)
    if on in (0, mask.size):
        return "mask is empty" if on == 0 else "mask is full"
    return ""


@dataclass(frozen=True)
class SegmentMasking:
    """Video4Removal's masking step: the masker on the candidates of several segments, in one ``masks()`` call
    when its items are independent, one call per segment when they form a clip (SAM2 propagation)."""

    params: MogMasker | GdinoSam2MaskerParams
    items_per_call: int = 2  # segments whose candidates one call takes together
    name: ClassVar[str] = "mask"

    def process(self, masker: Masker, works: Sequence[SegmentWork]) -> list[float]:
        clips = [[c.mask_input() for c in work.candidates] for work in works]
        if masker.items_are_clip:
            grouped = [masker.masks(clip) if clip else [] for clip in clips]
        else:
            flat = masker.masks([item for clip in clips for item in clip])
            bounds = np.cumsum([0, *map(len, clips)])
            grouped = [flat[start:stop] for start, stop in zip(bounds, bounds[1:])]
        for work, results in zip(works, grouped):
            work.results = list(results)
            work.stats.counts["masked"] += len(results)
        return [float(len(clip)) for clip in clips]  # the call's time shared by candidate count


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
                "masker": masker_name,
                "reader": work.reader,
                "video_info": work.info.to_dict() | {"rotation": source.rotation},  # frames are written as stored
                "config_hash": config_hash,
                "version": __version__,
            }
            samples.append(
                {
                    "__key__": key,
                    "source.jpg": encode_jpeg(source.image, params.jpeg_quality),
                    "target.jpg": encode_jpeg(target.image, params.jpeg_quality),
                    "mask.png": encode_png_gray(result.mask),
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
        SegmentMasking(params.masker).process(masker, [work])
    samples = encode_samples(work, masker.name, params, config_hash)
    return samples, work.rejects, work.stats
