"""The Video4Removal Ray Data graph.

    videos (local or s3://)  -> flat_map: probe the header, cut into segments (skipping committed ones)
      -> map: decode, screen, MOG2, pair, mask, encode one segment -> one writer row per segment
      -> ShardSink: shards/, manifest/, rejects/

A segment is the unit of parallelism and of incremental progress: its id is its frame range, which
depends only on the video and the config. S3 videos are read through seekable files (ranged GETs).
With a masker that runs a model (GroundingDINO + SAM2), the map is split around it: analyse
(CPU tasks) -> mask (an actor pool loading the models once per actor, on GPUs when configured) ->
encode (CPU tasks).
"""

from __future__ import annotations

import ray

from .. import storage
from ..operators.codecs import BadInput
from ..operators.mask_stage import MaskStage
from ..operators.video4removal import PIPELINE, analyse_segment, encode_samples, process_segment, split_video
from ..operators.video_io import probe
from .config import Video4RemovalConfig
from .inputs import Unit, discover_all, discover_videos
from .run import Job, verify_model_stage
from .runtime import actor_stage, io_concurrency
from .writer import Progress, pack_group


def _source(uri: str):
    """A local path as is; an S3 object as an opener of fresh seekable files."""
    return (lambda: storage.open_input_file(uri)) if storage.is_s3(uri) else uri


def segments_of(row: dict, config: Video4RemovalConfig, skip: dict[str, set[str]]) -> list[dict]:
    """The segments of one video still to do; an unreadable video becomes one empty segment, which
    the segment stage turns into a reject with the reader's reason."""
    try:
        ranges = split_video(probe(_source(row["uri"]), config.decode), config)
    except BadInput:
        ranges = [(0, 0)]
    done = skip.get(row["unit"], set())
    return [
        row | {"start": start, "stop": stop, "segment": f"{start}-{stop}", "unit_total": len(ranges)}
        for start, stop in ranges
        if f"{start}-{stop}" not in done
    ]


WORKS_PER_MASK_CALL = 2  # segments whose candidates one masking call takes together


def process_video_segment(row: dict, config: Video4RemovalConfig, config_hash: str) -> dict:
    """One segment in, one writer row out (maskers that run no model)."""
    samples, rejects, stats = process_segment(row["unit"], _source(row["uri"]), row["start"], row["stop"], config, config_hash)
    return pack_group(row["unit"], [row["segment"]], row["unit_total"], samples, rejects, stats)


def analyse(row: dict, config: Video4RemovalConfig) -> dict:
    """A segment up to its masks: the SegmentWork travels to the masking actors."""
    work = analyse_segment(row["unit"], _source(row["uri"]), row["start"], row["stop"], config)
    return {"work": work, "segment": row["segment"], "unit_total": row["unit_total"]}


def encode(row: dict, config: Video4RemovalConfig, config_hash: str) -> dict:
    """A masked segment's samples: its writer row."""
    work = row["work"]
    samples = encode_samples(work, list(row["results"]), config.masker.name, config, config_hash)
    return pack_group(work.video_id, [row["segment"]], row["unit_total"], samples, work.rejects, work.stats)


def build(units: list[Unit], progress: Progress, config: Video4RemovalConfig, config_hash: str) -> ray.data.Dataset:
    videos = ray.data.from_items([{"unit": u.name, "uri": u.uri} for u in units])
    segments = videos.flat_map(
        segments_of, fn_kwargs={"config": config, "skip": progress.consumed}, num_cpus=0, concurrency=io_concurrency()
    )
    masker = config.masker
    if not masker.runs_model:
        return segments.map(process_video_segment, fn_kwargs={"config": config, "config_hash": config_hash})
    masked = actor_stage(segments.map(analyse, fn_kwargs={"config": config}), MaskStage, masker, WORKS_PER_MASK_CALL)
    return masked.map(encode, fn_kwargs={"config": config, "config_hash": config_hash})


def check(config: Video4RemovalConfig) -> None:
    """Checks before Ray starts: the masker's weights exist and fit its models."""
    if config.masker.runs_model:
        verify_model_stage(config.masker)


def rows_per_shard(config: Video4RemovalConfig) -> int:
    return config.shards.max_samples // config.pairing.max_pairs


JOB = Job(PIPELINE, Video4RemovalConfig, lambda args: discover_all(args, discover_videos), build, rows_per_shard, check)
