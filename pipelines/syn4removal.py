"""The Syn4Removal pipeline: its config, its Ray Data graph and its command.

    read (SA-1B tars | planned folders, panoptic and Open Images splits) -> one row per group of images
      -> prepare: decode, entity bank, backgrounds              (operators.syn4removal.extract_group)
      -> [a pixel scorer (CLIP) as an actor pool]               (operators.syn4removal.EntityScoring)
      -> finish: compose, encode                                -> one writer row per group
      -> ShardSink: shards/, manifest/, rejects/

Reading reserves no CPU: it is I/O-bound, a tar's read task lives as long as the tar streams, and a
reservation would keep map tasks off the cores. Without a reservation nothing limits how many
read tasks start, so their concurrency is capped explicitly (Ray's streaming backpressure bounds
their memory). The different resources also keep Ray from fusing the read with the map, so the
groups of one tar are processed in parallel.
"""

from __future__ import annotations

from itertools import groupby

from .. import storage
from ..operators.syn4removal import PIPELINE, EntityScoring, Group, Syn4RemovalParams, compose_group, extract_group
from .config import RunParams
from .inputs import Unit, discover_all, plan_groups
from .model_stages import ITEM
from .run import Pipeline, pipeline_command
from .writer import Progress, pack_group


class Syn4RemovalConfig(Syn4RemovalParams, RunParams):
    """The ``pairmine syn4removal`` config (configs/syn4removal.yaml)."""


def extract(row: dict, config: Syn4RemovalConfig) -> dict:
    """A reader row's group decoded, its entities cut (and scored, by a scorer that needs no pixels)."""
    return {ITEM: extract_group(row, config, config.entities.scorer)}


def finish(row: dict, config: Syn4RemovalConfig, config_hash: str) -> dict:
    """Compose and encode the triplets of an extracted group: its writer row."""
    group: Group = row[ITEM]
    samples = compose_group(group, config, config_hash)
    return pack_group(group.unit, group.consumed, group.unit_total, samples, group.rejects, group.stats)


def scoring(config: Syn4RemovalConfig) -> EntityScoring | None:
    """A scorer that looks at pixels is its own stage; the others ran in ``extract``."""
    scorer = config.entities.scorer
    return EntityScoring(scorer) if scorer.needs_pixels else None


def read_groups(units: list[Unit], progress: Progress, config: Syn4RemovalConfig):
    """Reader rows of the pending units (None if nothing is left); ids committed earlier are skipped."""
    import ray

    from .readers import PlannedGroupsDatasource, SA1BTarDatasource, vanished_row
    from .runtime import io_concurrency

    io_tasks = {"num_cpus": 0, "concurrency": io_concurrency()}
    parts, vanished = [], []
    tars = sorted((u for u in units if u.kind == "sa1b-tar" and not u.problem), key=lambda u: storage.is_s3(u.uri))
    for _, same_fs in groupby(tars, key=lambda u: storage.is_s3(u.uri)):
        same_fs = list(same_fs)
        fs = storage.resolve(same_fs[0].uri)[0]
        paths = {storage.resolve(u.uri)[1]: u for u in same_fs}
        try:
            source = SA1BTarDatasource(
                list(paths),
                filesystem=fs,
                units={path: u.name for path, u in paths.items()},
                skip={u.name: progress.consumed[u.name] for u in same_fs if u.name in progress.consumed},
                group_size=config.group_size,
                max_file_bytes=config.max_file_bytes,
            )
        except ValueError:  # Ray refuses a source whose files are all gone
            if any(storage.exists(u.uri) for u in same_fs):
                raise
            vanished += same_fs
            continue
        vanished += [paths[path] for path in source.vanished]
        parts.append(ray.data.read_datasource(source, override_num_blocks=len(paths), **io_tasks))
    rows = [vanished_row(u.name, "sa1b", u.uri) for u in vanished] + [
        row
        for unit in units
        if unit.kind != "sa1b-tar" or unit.problem
        for row in plan_groups(unit, config.group_size, progress.consumed.get(unit.name, set()))
    ]
    if rows:
        source = PlannedGroupsDatasource(rows, config.max_file_bytes)
        parts.append(ray.data.read_datasource(source, override_num_blocks=len(rows), **io_tasks))
    if not parts:
        return None
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def rows_per_shard(config: Syn4RemovalConfig) -> int:
    return config.shards.max_samples // (config.group_size * config.pairing.pairs_per_background)


EXAMPLES = """examples:
  # the bundled sample, embedded local Ray
  pairmine syn4removal --input samples/sa1b --output out/sample

  # SA-1B tars and a COCONut panoptic root from S3, shards to S3, two overrides
  pairmine syn4removal --input s3://data/sa1b/ --input panoptic:s3://data/coconut \\
      --output s3://pairs/syn/v1 --config configs/syn4removal.yaml \\
      --set placement.max_rotation_deg=10 --set pairing.pairs_per_background=2

  # check config and inputs, show what is left to do, and stop
  pairmine syn4removal --input sa1b/ --output out/ --dry-run

  # Open Images v7 instance masks (csv + class names + masks in zips or a folder + <split>/ images)
  pairmine syn4removal --input openimages:/data/oidv7 --output out/oi --set entities.min_class_entities=50

inputs: an SA-1B .tar (or .tar.gz / .tgz), a folder of SA-1B tars, a folder of loose SA-1B jpg+json, a COCO/COCONut
panoptic root (annotations/panoptic_<split>.json), or an Open Images root
(<split>-annotations-object-segmentation.csv); prefix KIND: (sa1b-tar:, sa1b-dir:, panoptic:,
openimages:) when a folder holds several kinds. Local paths or s3:// URIs; S3 settings come from the AWS
environment (AWS_ENDPOINT_URL, credentials, AWS_REGION).

Rerunning with the same --output and config continues where the last run stopped and skips
finished inputs."""

SYN4REMOVAL = Pipeline(
    name=PIPELINE,
    help="synthetic triplets: entities from segmented images pasted into other images",
    description="Syn4Removal (SmartEraser): cut entities out of SA-1B / COCO-panoptic / Open Images images and paste them "
    "into other images at positions that bury no object, alpha-blended (feathered or matted); writes (source.jpg, mask.png, "
    "target.jpg, alpha.png, json) samples.",
    examples=EXAMPLES,
    config_model=Syn4RemovalConfig,
    discover=discover_all,
    read=read_groups,
    prepare=extract,
    stage=scoring,
    finish=finish,
    rows_per_shard=rows_per_shard,
    stage_items={
        "decode": ("records",),
        "annotations": ("images",),
        "entities": ("images",),
        "score": ("entities_scored",),
        "compose": ("backgrounds_kept",),
        "encode": ("pairs",),
    },
)
COMMANDS = [pipeline_command(SYN4REMOVAL)]
