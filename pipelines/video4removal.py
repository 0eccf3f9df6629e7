"""The Video4Removal Ray Data graph.

    videos (local or s3://)  -> flat_map: probe the header, cut into segments (skipping committed ones)
      -> map: decode, screen, MOG2, pair, mask, encode one segment -> one writer row per segment
      -> ShardSink: shards/, manifest/, rejects/

A segment is the unit of parallelism and of incremental progress: its id is its frame range, which
depends only on the video and the config. S3 videos are read through seekable files (ranged GETs).
"""

from __future__ import annotations

import ray

from .. import storage
from ..operators.codecs import BadInput
from ..operators.video4removal import PIPELINE, process_segment, split_video
from ..operators.video_io import probe
from .config import Video4RemovalConfig
from .inputs import Unit, discover_all, discover_videos
from .run import Job, io_concurrency
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


def process_video_segment(row: dict, config: Video4RemovalConfig, config_hash: str) -> dict:
    """One segment in, one writer row out."""
    samples, rejects, stats = process_segment(row["unit"], _source(row["uri"]), row["start"], row["stop"], config, config_hash)
    return pack_group(row["unit"], [row["segment"]], row["unit_total"], samples, rejects, stats)


def build(units: list[Unit], progress: Progress, config: Video4RemovalConfig, config_hash: str) -> ray.data.Dataset:
    videos = ray.data.from_items([{"unit": u.name, "uri": u.uri} for u in units])
    segments = videos.flat_map(
        segments_of, fn_kwargs={"config": config, "skip": progress.consumed}, num_cpus=0, concurrency=io_concurrency()
    )
    return segments.map(process_video_segment, fn_kwargs={"config": config, "config_hash": config_hash})


def rows_per_shard(config: Video4RemovalConfig) -> int:
    return config.shards.max_samples // config.pairing.max_pairs


JOB = Job(PIPELINE, Video4RemovalConfig, lambda args: discover_all(args, discover_videos), build, rows_per_shard)
