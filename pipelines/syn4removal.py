"""The Syn4Removal Ray Data graph.

    read (SA-1B tars | planned folders and panoptic splits)   -> one row per group of images
      -> map: decode, entity bank, backgrounds, compose, encode -> one writer row per group
      -> ShardSink: shards/, manifest/, rejects/

With a scorer that looks at pixels (CLIP), the map is split around it: extract (CPU tasks) ->
score (an actor pool that loads the model once per actor, on GPUs when configured) -> compose and
encode (CPU tasks); groups travel between them as Python objects.

Reading reserves no CPU: it is I/O-bound, a tar's read task lives as long as the tar streams, and a
reservation would keep map tasks off the cores. Without a reservation nothing limits how many
read tasks start, so their concurrency is capped explicitly (Ray's streaming backpressure bounds
their memory). The different resources also keep Ray from fusing the read with the map, so the
groups of one tar are processed in parallel.
"""

from __future__ import annotations

from itertools import groupby

import ray

from ..operators.clip_stage import ClipScoreStage
from ..operators.syn4removal import PIPELINE, Group, compose_group, extract_group
from .. import storage
from .config import Syn4RemovalConfig
from .inputs import Unit, discover_all, plan_groups
from .readers import PlannedGroupsDatasource, SA1BTarDatasource
from .run import Job, verify_model_stage
from .runtime import actor_stage, io_concurrency
from .writer import Progress, pack_group



GROUPS_PER_SCORE_CALL = 4  # groups whose entities one scoring call batches together


def extract(row: dict, config: Syn4RemovalConfig) -> dict:
    return {"group": extract_group(row, config, config.entities.scorer)}


def finish(row: dict, config: Syn4RemovalConfig, config_hash: str) -> dict:
    """Compose and encode the triplets of an extracted group: its writer row."""
    group: Group = row["group"]
    samples = compose_group(group, config, config_hash)
    return pack_group(group.unit, group.consumed, group.unit_total, samples, group.rejects, group.stats)


def process_group(row: dict, config: Syn4RemovalConfig, config_hash: str) -> dict:
    """One reader row in, one writer row out (scorers that need no model)."""
    return finish(extract(row, config), config, config_hash)


def read_groups(units: list[Unit], progress: Progress, config: Syn4RemovalConfig) -> ray.data.Dataset | None:
    """Reader rows of the pending units (None if nothing is left); ids committed earlier are skipped."""
    io_tasks = {"num_cpus": 0, "concurrency": io_concurrency()}
    parts = []
    tars = sorted((u for u in units if u.kind == "sa1b-tar"), key=lambda u: storage.is_s3(u.uri))
    for _, same_fs in groupby(tars, key=lambda u: storage.is_s3(u.uri)):
        same_fs = list(same_fs)
        fs = storage.resolve(same_fs[0].uri)[0]
        paths = {storage.resolve(u.uri)[1]: u for u in same_fs}
        source = SA1BTarDatasource(
            list(paths),
            filesystem=fs,
            units={path: u.name for path, u in paths.items()},
            skip={u.name: progress.consumed[u.name] for u in same_fs if u.name in progress.consumed},
            group_size=config.group_size,
            max_file_bytes=config.max_file_bytes,
        )
        parts.append(ray.data.read_datasource(source, override_num_blocks=len(paths), **io_tasks))
    rows = [
        row
        for unit in units
        if unit.kind != "sa1b-tar"
        for row in plan_groups(unit, config.group_size, progress.consumed.get(unit.name, set()))
    ]
    if rows:
        source = PlannedGroupsDatasource(rows, config.max_file_bytes)
        parts.append(ray.data.read_datasource(source, override_num_blocks=len(rows), **io_tasks))
    if not parts:
        return None
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def build(units: list[Unit], progress: Progress, config: Syn4RemovalConfig, config_hash: str) -> ray.data.Dataset | None:
    groups = read_groups(units, progress, config)
    if groups is None:
        return None
    scorer = config.entities.scorer
    if not scorer.needs_pixels:
        return groups.map(process_group, fn_kwargs={"config": config, "config_hash": config_hash})
    extracted = groups.map(extract, fn_kwargs={"config": config})
    scored = actor_stage(extracted, ClipScoreStage, scorer, GROUPS_PER_SCORE_CALL)
    return scored.map(finish, fn_kwargs={"config": config, "config_hash": config_hash})


def check(config: Syn4RemovalConfig) -> None:
    """Checks before Ray starts: the scorer's weights exist and fit its model."""
    if config.entities.scorer.needs_pixels:
        verify_model_stage(config.entities.scorer)


def rows_per_shard(config: Syn4RemovalConfig) -> int:
    return config.shards.max_samples // (config.group_size * config.pairing.pairs_per_background)


JOB = Job(PIPELINE, Syn4RemovalConfig, discover_all, build, rows_per_shard, check)
