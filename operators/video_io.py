"""Video reading behind one interface: a cheap probe and index-exact frame decoding, PyAV or decord.

A source is a local path or a zero-argument callable returning a fresh seekable binary file-like
(the pipelines pass a pyarrow ``RandomAccessFile`` for ``s3://``). PyAV reads a file-like through
its ``read``/``seek`` callbacks, so decoding one segment fetches only the byte ranges it needs;
decord copies a file-like whole into memory first. Both backends number frames in presentation
order from 0 and decode only the requested indices' neighbourhood (seek to the preceding keyframe,
decode forward), so a long video's segments can be decoded independently. Readers are tried in
order: where the first fails on a file (cannot open it, or errors while decoding) the next one is
tried, and the result says which reader produced it. Unusable inputs raise ``BadInput``; I/O errors
of a file-like (network) propagate, for the caller to retry.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import BinaryIO, Literal, Protocol, Union

import cv2
import numpy as np
from pydantic import Field

from .. import storage
from .codecs import BadInput
from .params import Params

Source = Union[str, os.PathLike, Callable[[], BinaryIO]]
ReaderName = Literal["pyav", "decord"]

_STILL_IMAGE_FORMATS = ("image2", "_pipe")  # FFmpeg demuxers that open a single picture as a "video"
_SEEK_GAP_SECONDS = 4.0  # decode forward rather than seek when the next wanted frame is this close
_DECORD_BATCH = 16  # frames per decord get_batch call (bounds the memory of full-resolution batches)
# PyAV numbers frames by timestamp at the stream's average rate. Where many frames share a number, the timestamps
# do not follow that rate (a recording paused for minutes, a strongly variable rate): those frames are unreachable
# by number, so such a video is read by decord, which numbers frames in decoding order (``check_timeline``)
_MAX_SHARED_INDEX = 0.25  # of a video's frames


class DecodeParams(Params):
    reader: ReaderName = Field("pyav", description="preferred reader; PyAV measured as fast as decord and reads file-likes by range")
    fallback: bool = Field(True, description="when the preferred reader fails on a file, try the other one")
    threads: int = Field(1, ge=0, le=64, description="decoder threads per video (0: FFmpeg's choice); 1 suits one Ray task per CPU")
    stride: int = Field(3, ge=1, le=300, description="analyse every stride-th frame (3: ~10 fps analysis for 25-30 fps video)")
    analysis_long_side: int = Field(
        320, ge=64, le=4096,
        description="analysis frames are scaled to this long side (never up); 320 and 480 find the same pairs and "
        "rejects on the sample clips, 320 with ~25% less CPU",
    )
    max_pixels: int = Field(4096 * 2304, ge=1, description="videos with more pixels per frame are rejected (an 8K BGR frame is 100 MB)")
    min_frames: int = Field(8, ge=2, description="videos or segments with fewer frames are rejected as too short")
    deinterlace: bool = Field(
        True, description="written frames the codec flags interlaced get their combs (a moving object's two fields, "
        "20 ms apart) filled from the top field; static parts keep both fields. false: as stored")


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int  # from the container header, else duration x fps
    codec: str
    duration: float  # seconds
    # width:height of one stored pixel as players show it (DV, broadcast and QCIF footage is anamorphic; unset
    # counts as square, as players take it); None when the reader cannot tell
    pixel_aspect: tuple[int, int] | None = None
    declared_frames: int = 0  # the frames the header promises, when the whole file ends over a second before its duration

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "fps": round(self.fps, 4), "frames": self.frames,
                "codec": self.codec, "duration": round(self.duration, 3),
                "pixel_aspect": list(self.pixel_aspect) if self.pixel_aspect else None}


@dataclass(frozen=True)
class Frame:
    index: int  # presentation-order number from 0
    time: float  # seconds from the stream start
    image: np.ndarray  # BGR uint8, as stored (a display rotation is not applied)
    rotation: int | None = None  # degrees the container asks players to rotate it by (None: the reader cannot tell)
    interlaced: bool = False  # the codec flags it interlaced (two fields woven; decord cannot tell)


@dataclass
class Decoded:
    """Frames of one request, the reader that produced them, and why decoding stopped early (if it did)."""

    reader: str
    frames: list[Frame]
    error: BadInput | None = None
    failed: tuple[str, ...] = ()  # "<reader>: <reason>" of the other readers tried


class VideoReader(Protocol):
    name: str

    def probe(self, source: Source) -> VideoInfo:
        """Header facts; BadInput when the source is not a readable video."""

    def frames(self, source: Source, indices: Sequence[int], size: tuple[int, int] | None, threads: int) -> Iterator[Frame]:
        """The frames with these indices, in order, at ``size`` (or full resolution); BadInput on a decoding error."""


def analysis_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(width, height) scaled so that the long side is at most ``long_side``; never upscaled."""
    scale = min(1.0, long_side / max(width, height))
    return max(2, round(width * scale)), max(2, round(height * scale))


@contextmanager
def _opened(source: Source):
    """The source as something a reader opens: a path string, or a fresh file-like closed afterwards."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise BadInput("unreadable", f"{type(exc).__name__}: {exc}") from None
        if size == 0:
            raise BadInput("empty_file", "zero bytes")
        yield path
        return
    with source() as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            raise BadInput("empty_file", "zero bytes")
        file.seek(0)
        yield file


MIN_SIDE = 16  # frames smaller than this on a side hold no object worth a pair (and starve the screening's tiles)


def _check_info(info: VideoInfo, max_pixels: int, min_frames: int) -> VideoInfo:
    pixels = info.width * info.height
    if info.width <= 0 or info.height <= 0 or pixels > max_pixels:
        raise BadInput("video_too_large", f"{info.width}x{info.height} ({pixels} px) exceeds max_pixels={max_pixels}")
    if min(info.width, info.height) < MIN_SIDE:
        raise BadInput("video_too_small", f"{info.width}x{info.height} frames: a side under {MIN_SIDE} px")
    if not info.fps > 0:
        raise BadInput("unknown_frame_rate", f"{info.codec} stream declares no frame rate")
    if info.frames < min_frames:
        raise BadInput("too_short", f"{info.frames} frames < min_frames={min_frames}")
    return info


class PyAVReader:
    """FFmpeg through PyAV: header-only probe, ranged reads from file-likes, scaling in swscale."""

    name = "pyav"

    def probe(self, source: Source) -> VideoInfo:
        import av

        with _opened(source) as src:
            try:
                with av.open(src) as container:
                    stream = self._video_stream(container)
                    info = self._info(container, stream)
                    if stream.frames or not info.fps > 0:  # the container counts its frames (MP4, MOV)
                        return info
                    frames, declared = _counted(container, stream, info.frames)
                    return replace(info, frames=frames, duration=frames / info.fps, declared_frames=declared)
            except av.FFmpegError as exc:
                raise BadInput("unreadable", f"not a readable video container ({exc})") from None

    def frames(self, source: Source, indices: Sequence[int], size: tuple[int, int] | None, threads: int) -> Iterator[Frame]:
        import av

        with _opened(source) as src:
            try:
                with av.open(src) as container:
                    stream = self._video_stream(container)
                    stream.codec_context.thread_count = threads
                    if threads != 1:
                        stream.thread_type = "AUTO"
                    yield from self._decode(container, stream, sorted(set(indices)), size)
            except av.FFmpegError as exc:
                raise BadInput("decode_error", str(exc)) from None

    @staticmethod
    def _video_stream(container):
        import av

        if any(part in container.format.name for part in _STILL_IMAGE_FORMATS):
            raise BadInput("not_a_video", f"a still image ({container.format.name})")
        if not container.streams.video:
            raise BadInput("no_video_stream", f"{container.format.name} container has no video stream")
        stream = container.streams.best("video")  # FFmpeg's choice, as its CLI's: not a cover picture listed first
        name = stream.codec_context.name if stream.codec_context else "?"
        try:
            av.codec.Codec(name, "r")
        except (av.codec.codec.UnknownCodecError, av.FFmpegError):
            raise BadInput("unsupported_codec", f"no decoder for codec {name!r}") from None
        return stream

    @staticmethod
    def _info(container, stream) -> VideoInfo:
        fps = _frame_rate(stream)
        if stream.duration is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (container.duration or 0) / 1e6
        frames = stream.frames or round(duration * fps)
        aspect = stream.sample_aspect_ratio  # FFmpeg's guess: the container's, else the codec's
        pixel_aspect = (aspect.numerator, aspect.denominator) if aspect else (1, 1)
        return VideoInfo(stream.codec_context.width, stream.codec_context.height, fps, frames, stream.codec_context.name, duration, pixel_aspect)

    @staticmethod
    def _decode(container, stream, wanted: list[int], size: tuple[int, int] | None) -> Iterator[Frame]:
        clock = _Clock.of(stream)
        gap = max(1, round(_SEEK_GAP_SECONDS * clock.fps))
        for cluster in _clusters(wanted, gap):
            pending = 0
            for frame in _decode_from(container, stream, clock, cluster[0], gap, set(cluster)):
                index = clock.index(frame)
                if index < cluster[pending]:
                    continue
                image = frame.to_ndarray(format="bgr24") if size is None else frame.reformat(
                    size[0], size[1], format="bgr24", interpolation="AREA").to_ndarray()
                yield Frame(index, clock.time(frame), image, int(frame.rotation or 0), bool(frame.interlaced_frame))
                while pending < len(cluster) and cluster[pending] <= index:  # also skips indices a VFR stream lacks
                    pending += 1
                if pending == len(cluster):
                    break


def deinterlace(image: np.ndarray, threshold: float = 10.0) -> np.ndarray:
    """A woven frame with its combs filled: where a bottom-field row and the rows either side of it each differ
    from both their neighbours the same way (grey levels over `threshold`), a moving object's two fields 20 ms
    apart, over at least 2 px of a row, the bottom row takes the mean of the top-field rows around it. Static
    parts, where the fields agree, keep their full vertical detail; one alternating row or a few pixels of
    them (texture, noise) is not a comb."""
    grey = (cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image).astype(np.float32)
    alternates = np.zeros(grey.shape, bool)
    alternates[1:-1] = (grey[1:-1] - grey[:-2]) * (grey[1:-1] - grey[2:]) > threshold * threshold
    comb = np.zeros(grey.shape, np.uint8)
    comb[1:-1] = alternates[1:-1] & alternates[:-2] & alternates[2:]
    comb[0::2] = 0
    comb = cv2.erode(comb, np.ones((1, 2), np.uint8))  # at least 2 px wide: a moved edge's, not noise
    comb = cv2.dilate(comb, np.ones((3, 7), np.uint8)).astype(bool)  # back, and the comb's ends and corners
    out = image.copy()
    rows = (image.shape[0] - 1) // 2  # bottom-field rows with a top-field row below them
    filled = ((image[0 : 2 * rows : 2].astype(np.uint16) + image[2 : 2 * rows + 1 : 2] + 1) // 2).astype(np.uint8)
    where = comb[1 : 2 * rows : 2]
    out[1 : 2 * rows : 2][where] = filled[where]
    return out


def _counted(container, stream, estimate: int) -> tuple[int, int]:
    """(frames, declared) of a stream whose header gives at most a duration (MKV, WebM, MPEG-TS): a wrong one
    planned thousands of imaginary segments, a missing one none. Seeks to the claimed end and demuxes what is
    left (a few packets, no decoding): the last video packet's frame index + 1, used when it differs from the
    estimate by more than a second (packet timestamps can miss the last frame or two) or exceeds it. When that seek lands on
    nothing, the estimate stands if there is one, else every packet is counted (a recording written to a pipe
    has no length). ``declared`` (else 0) is the frame count the header promises when the file itself, every
    stream of it, ends over a second before its declared duration: cut short (a partial download), or a header
    that is wrong. A video that starts late or ends before the audio is neither."""
    clock = _Clock.of(stream)
    if estimate <= 0:
        return sum(1 for packet in container.demux(stream) if packet.size), 0  # skips the flush packet
    container.seek(clock.offset(estimate - 1), stream=stream, backward=True)
    last, end = -1, 0.0  # the video's last frame index; where the file's last packet of any stream ends (s)
    for packet in container.demux():
        if not packet.size or packet.pts is None:
            continue
        if packet.stream is stream:
            last = max(last, clock.index(packet))
        end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    if last < 0 or abs(last + 1 - estimate) <= clock.fps:
        return max(estimate, last + 1), 0  # a frame past the estimate is there (a last frame shorter than the rest)
    # the declared duration read as an end time: Matroska's is its last timestamp whatever the first (start_time
    # + duration overshoots a video that starts late); where it is end - start, this can only miss a cut, never invent one
    missing = container.duration / 1e6 - end if container.duration else 0.0
    return last + 1, last + 1 + round(missing * clock.fps) if missing > 1.0 else 0


def check_timeline(source: Source) -> bool:
    """Whether PyAV's numbering (timestamps at the average rate) reaches every frame of the video; False when over
    a quarter of its frames would share a number (a motion-triggered recording paused for minutes, a strongly
    variable rate): then the whole video is to be read in decoding order (decord), every segment alike. BadInput
    when its timestamps jump back: recordings joined end to end in a container whose timestamps may restart
    (MPEG-TS / PS: ``cat a.ts b.ts``, a DVR export), where a seek by timestamp lands in either part. Timestamps
    come from the container's index where it has one per frame (MP4 / MOV: read with the header); MPEG-TS / PS
    are demuxed whole (no decoding); other containers, and files PyAV cannot open, pass as they are."""
    import av

    with _opened(source) as src:
        try:
            with av.open(src) as container:
                if not container.streams.video:
                    return True
                stream = container.streams.best("video")
                clock = _Clock.of(stream)
                if container.format.flags & av.format.Flags.ts_discont.value:
                    stamps = _demuxed_stamps(container, stream, clock)
                elif len(stream.index_entries) >= max(2, stream.frames):
                    stamps = [entry.timestamp for entry in stream.index_entries]
                else:
                    return True
        except av.FFmpegError:
            return True
    return not clock.fps > 0 or len(stamps) - len({clock.index_at(t) for t in stamps}) <= _MAX_SHARED_INDEX * len(stamps)


def _demuxed_stamps(container, stream, clock: "_Clock") -> list[int]:
    """Every packet's presentation timestamp; BadInput where decoding timestamps go back by more than a frame
    (they only go forward within one recording, B-frames or not)."""
    stamps, top, jumps, first = [], None, 0, ""
    frame = 1.0 / clock.fps / clock.time_base if clock.fps > 0 else 0.0
    for packet in container.demux(stream):
        if packet.pts is not None:
            stamps.append(packet.pts)
        if packet.dts is None:
            continue
        if top is not None and packet.dts < top - frame:
            jumps += 1
            first = first or f"{float(top * clock.time_base):.2f} s to {float(packet.dts * clock.time_base):.2f} s"
            top = packet.dts
        top = packet.dts if top is None else max(top, packet.dts)
    if jumps:
        raise BadInput("timestamp_discontinuity", f"timestamps jump back {jumps} time(s) (first from {first}): recordings joined "
                       "end to end; split them, or remux (ffmpeg -i IN -c copy OUT.mp4 renumbers them)")
    return stamps


def _first_line(exc: Exception) -> str:
    """An exception's first line, without decord's "[time] source.cc:line: " prefix."""
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", storage.first_line(exc))[:300]


def _frame_rate(stream) -> float:
    """The stream's average rate, unless it is over twice the rate its timestamps show (FFmpeg's r_frame_rate): an
    MKV whose default duration is its 1-ms time base declares 1000 fps for 25-fps frames, which numbered them in
    ms, analysed every frame and divided the per-frame camera motion by 40."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if rate and stream.base_rate and rate > 2 * stream.base_rate:
        rate = stream.base_rate
    return float(rate) if rate else 0.0


@dataclass(frozen=True)
class _Clock:
    """Frame index <-> stream timestamp for a constant-rate numbering (what decord and ffprobe count)."""

    fps: float
    start: int
    time_base: float

    @classmethod
    def of(cls, stream) -> "_Clock":
        return cls(_frame_rate(stream), stream.start_time or 0, float(stream.time_base))

    def index(self, frame) -> int:
        if frame.pts is None:
            raise BadInput("decode_error", "frames carry no timestamps")
        return self.index_at(frame.pts)

    def index_at(self, pts: int) -> int:
        return round((pts - self.start) * self.time_base * self.fps)

    def time(self, frame) -> float:
        return (frame.pts - self.start) * self.time_base

    def offset(self, index: int) -> int:
        return self.start + int(index / self.fps / self.time_base)


def _clusters(wanted: list[int], gap: int) -> Iterator[list[int]]:
    """Sorted indices grouped so that one seek serves each group (neighbours at most ``gap`` apart)."""
    cluster = wanted[:1]
    for index in wanted[1:]:
        if index - cluster[-1] > gap:
            yield cluster
            cluster = []
        cluster.append(index)
    if cluster:
        yield cluster


def _decode_from(container, stream, clock: _Clock, index: int, gap: int, wanted: set[int]) -> Iterator:
    """Decoded frames from the keyframe at or before ``index``; seeks earlier while the demuxer lands past it
    or on nothing (MPEG-TS seeks forward to the next keyframe, even to the stream's own start time), at last to
    before the stream's start, which reaches its first frame."""
    back = 0
    while True:
        seek_index = index - back if index - back >= 0 else -gap
        try:
            container.seek(clock.offset(seek_index), stream=stream, backward=True)
        except PermissionError:  # AVI refuses a time before its start: its own start reaches the first frame
            if seek_index >= 0:
                raise
            container.seek(clock.start, stream=stream, backward=True)
        frames = _decoded(container, stream, clock, wanted)
        first = next(frames, None)
        if seek_index < 0 and first is None:
            return
        if first is not None and (clock.index(first) <= index or seek_index < 0):
            yield first
            yield from frames
            return
        back = max(gap, 2 * back)


# Decoders that read ``skip_frame`` for each packet they decode; others (libdav1d) read it once, when they
# open, and would then drop wanted non-reference frames too
_SKIP_PER_PACKET = frozenset({"h264", "hevc"})


def _decoded(container, stream, clock: _Clock, wanted: set[int]) -> Iterator:
    """The stream's frames from where the container stands, leaving undecoded the unwanted frames no other
    frame depends on: every one of an intra-only codec (its packets are not even sent), the non-reference
    ones of H.264 and HEVC (FFmpeg's ``skip_frame``, set per packet). The wanted frames come out
    bit-identical to a full decode."""
    context = stream.codec_context
    intra_only, per_packet = context.codec.intra_only, context.codec.name in _SKIP_PER_PACKET
    for packet in container.demux(stream):
        skip = packet.pts is not None and clock.index(packet) not in wanted
        if skip and intra_only:
            continue
        if per_packet:
            context.skip_frame = "NONREF" if skip else "DEFAULT"
        yield from packet.decode()


class DecordReader:
    """decord: indexes the whole file on open (a file-like is copied into memory), RGB batches."""

    name = "decord"

    def probe(self, source: Source) -> VideoInfo:
        with self._open(source, None, 1) as vr:
            height, width = vr[0].shape[:2]
            fps = float(vr.get_avg_fps())
            return VideoInfo(width, height, fps, len(vr), "?", len(vr) / fps if fps > 0 else 0.0)

    def frames(self, source: Source, indices: Sequence[int], size: tuple[int, int] | None, threads: int) -> Iterator[Frame]:
        from decord import DECORDError

        with self._open(source, size, threads) as vr:
            wanted = [i for i in sorted(set(indices)) if 0 <= i < len(vr)]
            for begin in range(0, len(wanted), _DECORD_BATCH):
                chunk = wanted[begin : begin + _DECORD_BATCH]
                try:
                    batch = vr.get_batch(chunk).asnumpy()
                    times = vr.get_frame_timestamp(chunk)[:, 0]
                except (DECORDError, RuntimeError) as exc:
                    raise BadInput("decode_error", _first_line(exc)) from None
                for index, time, rgb in zip(chunk, times, batch):
                    yield Frame(index, float(time), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    @staticmethod
    @contextmanager
    def _open(source: Source, size: tuple[int, int] | None, threads: int):
        import decord

        width, height = size or (-1, -1)
        with _opened(source) as src:
            try:
                vr = decord.VideoReader(src, width=width, height=height, num_threads=threads)
            except (decord.DECORDError, RuntimeError, AssertionError) as exc:
                raise BadInput("unreadable", _first_line(exc)) from None
            yield vr


READERS: dict[str, VideoReader] = {reader.name: reader for reader in (PyAVReader(), DecordReader())}


def reader_order(params: DecodeParams) -> tuple[str, ...]:
    """The readers to try, preferred first."""
    others = tuple(name for name in READERS if name != params.reader)
    return (params.reader, *others) if params.fallback else (params.reader,)


def probe(source: Source, params: DecodeParams) -> VideoInfo:
    """Resolution, fps, frame count and codec from the container header; BadInput when unusable.

    PyAV is tried first whatever the preferred reader (it parses the header only); decord only
    when PyAV cannot open the file and fallback is on.
    """
    order = ("pyav", "decord") if params.fallback else (params.reader,)
    failures = []
    for name in order:
        try:
            info = READERS[name].probe(source)
        except BadInput as bad:
            failures.append(bad)
            if bad.reason == "empty_file":  # no reader can do better
                break
        else:
            return _check_info(info, params.max_pixels, params.min_frames)
    raise BadInput(failures[0].reason, "; ".join(f"{name}: {bad.detail}" for name, bad in zip(order, failures)))


def read_frames(source: Source, indices: Sequence[int], readers: Sequence[str], size: tuple[int, int] | None, threads: int) -> Decoded:
    """Decode the given frame indices (at ``size`` = (width, height), or full resolution).

    Readers are tried in order until one returns every requested frame up to the end of the
    stream; otherwise the result of the reader that got furthest is returned with its error.
    Indices past the end of the stream are simply absent from the result.
    """
    attempts = []
    for name in readers:
        attempt = Decoded(name, [])
        try:
            for frame in READERS[name].frames(source, indices, size, threads):
                attempt.frames.append(frame)
        except BadInput as bad:
            attempt.error = bad
        attempts.append(attempt)
        if attempt.error is None:
            break
    best = attempts[-1] if attempts[-1].error is None else max(attempts, key=lambda a: len(a.frames))
    best.failed = tuple(f"{a.reader}: {a.error.reason}" for a in attempts if a is not best)
    return best
