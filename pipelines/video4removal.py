"""The Video4Removal pipeline: its config, its Ray Data graph and its command.

    videos (local or s3://)  -> flat_map: probe the header, cut into segments (skipping committed ones)
      -> prepare: decode, screen, MOG2, pair one segment       (operators.video4removal.analyse_segment)
      -> the masker: in the CPU task (mog), or an actor pool (GroundingDINO + SAM2)  (SegmentMasking)
      -> finish: encode                                        -> one writer row per segment
      -> ShardSink: shards/, manifest/, rejects/

A segment is the unit of parallelism and of incremental progress: its id is its frame range, which
depends only on the video and the config. S3 videos are read through seekable files (ranged GETs).
"""

from __future__ import annotations

from .. import storage
from ..dataset import Reject
from ..operators.video4removal import PIPELINE, SegmentMasking, SegmentWork, Video4RemovalParams, analyse_segment, encode_samples, split_video
from ..operators.codecs import BadInput
from ..operators.video_io import check_timeline, probe
from .config import RunParams
from .inputs import VANISHED, Unit, discover_all, discover_videos, vanished_detail
from .model_stages import ITEM
from .run import Pipeline, pipeline_command
from .writer import Progress, pack_group


class Video4RemovalConfig(Video4RemovalParams, RunParams):
    """The ``pairmine video4removal`` config (configs/video4removal.yaml)."""


def _source(uri: str):
    """A local path as is; an S3 object as an opener of fresh seekable files."""
    return (lambda: storage.open_input_file(uri)) if storage.is_s3(uri) else uri


def segments_of(row: dict, config: Video4RemovalConfig, skip: dict[str, set[str]]) -> list[dict]:
    """The segments of one video still to do, each with the reader all of them use (``check_timeline``); an
    unreadable video becomes one empty segment, and frames its header promises past the stream's end one more,
    which the segment stage turns into rejects with the reason."""
    told: dict[tuple[int, int], dict] = {}  # ranges that are only a reject: their reason
    try:
        if row["problem"]:
            ranges = [(0, 0)]
        else:
            source = _source(row["uri"])
            info = probe(source, config.decode)
            regular = check_timeline(source)  # once per video, before its segments part; BadInput: joined recordings
            if config.decode.reader == "pyav" and not regular:
                if not config.decode.fallback:
                    raise BadInput("irregular_timestamps", "over a quarter of its frames share a frame number at its average rate "
                                   "(a paused recording, a strongly variable rate); decode.fallback lets decord read it in decoding order")
                row = row | {"reader": "decord"}
            ranges = split_video(info, config)
            if info.declared_frames:  # a cut-off MKV / WebM / TS: its missing tail is a reject, not silently absent
                tail = (info.frames, info.declared_frames)
                told[tail] = {"reason": "truncated_video", "problem": (
                    f"the stream ends at frame {info.frames} ({info.duration:.1f} s) but its header gives {info.declared_frames} "
                    f"frames ({info.declared_frames / info.fps:.1f} s): the file is cut short, or its header is wrong")}
                ranges.append(tail)
    except Exception as exc:  # BadInput, or what no check foresaw (the segment stage probes again and says why)
        if not storage.exists(row["uri"]):  # gone since the run listed it: not done, so a rerun reads it if it is back
            return [row | {"start": 0, "stop": 0, "segment": "", "unit_total": -1, "mined": 0, "reason": VANISHED,  # no id: nothing done
                           "problem": vanished_detail(row["uri"])}]
        if isinstance(exc, OSError):  # a read that failed (S3 after its retries): the task's retry, else the job's error
            raise
        if isinstance(exc, BadInput):  # the segment stage rejects the video with this reason
            row = row | {"problem": exc.detail, "reason": exc.reason}
        ranges = [(0, 0)]
    done = skip.get(row["unit"], set())
    return [
        row | {"start": start, "stop": stop, "segment": f"{start}-{stop}", "unit_total": len(ranges), "mined": len(ranges) - len(told)}
        | told.get((start, stop), {})
        for start, stop in ranges
        if f"{start}-{stop}" not in done
    ]


def read_segments(units: list[Unit], progress: Progress, config: Video4RemovalConfig):
    """One row per segment still to do of the pending videos."""
    import ray
    from ray.data import TaskPoolStrategy

    from .runtime import io_concurrency

    videos = ray.data.from_items([{"unit": u.name, "uri": u.uri, "problem": u.problem or "", "reason": "unreadable_name", "reader": ""}
                                  for u in units])
    return videos.flat_map(segments_of, fn_kwargs={"config": config, "skip": progress.consumed}, num_cpus=0,
                         compute=TaskPoolStrategy(size=io_concurrency()))


def analyse(row: dict, config: Video4RemovalConfig) -> dict:
    """A segment up to its masks: its SegmentWork travels to the masking step."""
    if row["problem"]:  # the whole video (0-0), or the frames its header promises past the stream's end
        work = SegmentWork(row["unit"], row["start"], row["stop"])
        work.reject(row["start"], row["stop"], "read", Reject.because(row["reason"], row["problem"]))
        return {ITEM: work, "segment": row["segment"], "unit_total": row["unit_total"]}
    if row.get("reader"):  # the video's own reader, for every segment and its full-resolution frames alike
        config = config.model_copy(update={"decode": config.decode.model_copy(update={"reader": row["reader"], "fallback": False})})
    work = analyse_segment(row["unit"], _source(row["uri"]), row["start"], row["stop"], config, segments=row["mined"])
    return {ITEM: work, "segment": row["segment"], "unit_total": row["unit_total"]}


def encode(row: dict, config: Video4RemovalConfig, config_hash: str) -> dict:
    """A masked segment's samples: its writer row."""
    work: SegmentWork = row[ITEM]
    samples = encode_samples(work, config.masker.name, config, config_hash)
    consumed = [row["segment"]] if row["segment"] else []  # a video gone since it was listed accounts for no segment
    return pack_group(work.video_id, consumed, row["unit_total"], samples, work.rejects, work.stats)


def masking(config: Video4RemovalConfig) -> SegmentMasking:
    return SegmentMasking(config.masker)


def rows_per_shard(config: Video4RemovalConfig) -> int:
    return config.shards.max_samples // config.pairing.max_pairs


EXAMPLES = """examples:
  # a folder of static-camera clips, embedded local Ray
  pairmine video4removal --input videos/ --output out/video

  # from S3 to S3, analysing every 2nd frame at 640 px
  pairmine video4removal --input s3://data/cctv/ --output s3://pairs/video/v1 \\
      --config configs/video4removal.yaml --set decode.stride=2 --set decode.analysis_long_side=640

inputs: a video file or a folder (searched recursively) of .mp4/.mov/.mkv/.avi/.webm/... videos,
local or s3:// (read by range, not copied). Videos are cut into segments processed in parallel;
a video or part with a moving camera, cuts, flicker or no clean background frame yields no pair
and a reject that says why.

Rerunning with the same --output and config continues where the last run stopped and skips
finished segments."""

VIDEO4REMOVAL = Pipeline(
    name=PIPELINE,
    help="real pairs from static-camera videos: frames with and without a moving object",
    description="Video4Removal (OmniEraser): MOG2 background subtraction on static segments of each video, frames paired "
    "by MSE outside the object (whole frames, or crops around an object when no whole frame is clean: region.mode), object "
    "masks from the MOG foreground or GroundingDINO + SAM2; writes (source.jpg, mask.png, effect_mask.png, target.jpg, json) samples.",
    examples=EXAMPLES,
    config_model=Video4RemovalConfig,
    discover=lambda args: discover_all(args, discover_videos),
    read=read_segments,
    prepare=analyse,
    stage=masking,
    finish=encode,
    rows_per_shard=rows_per_shard,
    stage_items={
        "decode": ("frames",),
        "screen": ("frames",),
        "mog": ("frames",),
        "pair": ("frames",),
        "mask": ("masked", "pairs_selected"),
        "encode": ("pairs",),
    },
)
COMMANDS = [pipeline_command(VIDEO4REMOVAL)]
