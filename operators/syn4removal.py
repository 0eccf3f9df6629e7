"""Syn4Removal per group: decode images, build the entity bank and backgrounds, compose triplets.

A group is a few consecutive images of one input unit (``group_size``). Each image is decoded once
and serves twice: as a source of entities and as a background. Entities are pasted only into
other images of the same group, so a worker holds one group at a time, whatever the dataset size,
and the output depends only on the inputs and the config (never on scheduling).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Annotated, ClassVar, NamedTuple, Sequence, Union
import numpy as np
from pydantic import Discriminator, Field, Tag, field_validator

from .. import __version__
from ..dataset import Reject, sample_json, sample_key
from .annotations import (
    Annotations, declared_size, load_json, load_panoptic_categories, parse_openimages, parse_panoptic, parse_sa1b, segments_info_of,
)
from .backgrounds import Background, BackgroundParams, background_reject, instances_of, resize_background
from .blending import BlendParams
from .clip_scorer import ClipScorerParams
from .codecs import BadInput, ImageHeader, decode_image, decode_panoptic_ids, encode_jpeg, encode_png_gray, orient, splice_jpeg_rows
from .composition import PairingParams, pair_group
from .entities import Entity, EntityLimits, geometry_reject, materialize, nested_rejects
from .mask_enhance import MaskEnhanceParams
from .params import Params
from .placement import PlacementParams
from .quality import PasteQualityParams
from .scorers import AnnotationScorer, EntityScorer, Score
from .stats import Stats

PIPELINE = "syn4removal"

log = logging.getLogger(__name__)


def _scorer_name(value) -> str:
    """The scorer a config names; without a name, the default one (so `--set entities.scorer.x=...` works)."""
    return value.get("name", "annotation") if isinstance(value, dict) else value.name


class EntityParams(EntityLimits):
    scorer: Annotated[
        Union[Annotated[AnnotationScorer, Tag("annotation")], Annotated[ClipScorerParams, Tag("clip")]],
        Discriminator(_scorer_name),
    ] = Field(default_factory=AnnotationScorer, description="entity scorer, chosen by `name`: annotation or clip")


class SynMaskEnhanceParams(MaskEnhanceParams):
    @field_validator("modes")
    @classmethod
    def _covering(cls, modes):
        if "erode" in modes:
            raise ValueError("'erode' shrinks the mask inside the object, so pixels outside the mask would differ "
                             "between source and target; use it at training time only")
        return modes


class Syn4RemovalParams(Params):
    """Everything that decides the triplets (hashed into ``config_hash`` and every sample key)."""

    seed: int = Field(0, ge=0, description="seed of every random draw (placement, size jitter, mask variant)")
    group_size: int = Field(16, ge=2, le=4096, description="images decoded together; entities are pasted within a group")
    max_image_pixels: int = Field(50_000_000, ge=1, description="larger declared images are rejected (decompression bombs)")
    max_file_bytes: int = Field(256 << 20, ge=1 << 10, description="larger input files are rejected unread")
    jpeg_quality: int = Field(95, ge=50, le=100, description="quality of the source/target JPEGs (both encoded alike)")
    entities: EntityParams = Field(default_factory=EntityParams)
    backgrounds: BackgroundParams = Field(default_factory=BackgroundParams)
    pairing: PairingParams = Field(default_factory=PairingParams)
    placement: PlacementParams = Field(default_factory=PlacementParams)
    blending: BlendParams = Field(default_factory=BlendParams)
    quality: PasteQualityParams = Field(default_factory=PasteQualityParams)
    mask_enhancement: SynMaskEnhanceParams = Field(default_factory=SynMaskEnhanceParams)


@dataclass
class Group:
    """The decoded images of one group, between the extract, score and compose stages."""

    unit: str
    consumed: list[str]  # every input id this group accounts for (for incremental reruns)
    unit_total: int  # -1, or on the unit's last group the number of input ids in the unit
    backgrounds: list[Background] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    model: dict | None = None  # the model stage's provenance (device, precision), recorded in each sample's json


class Parsed(NamedTuple):
    """A record's annotations with the image turned as they need it (``codecs.orient``)."""

    annotations: Annotations
    ids: np.ndarray | None  # panoptic: the segment-id map, at the annotated size
    image: np.ndarray  # BGR, possibly a reduced decode of the annotated size
    size: tuple[int, int]  # (height, width) the annotations refer to
    turned: bool

    @property
    def scale(self) -> tuple[float, float]:
        """(y, x) image pixels per annotated pixel: below 1 for a reduced decode."""
        return self.image.shape[0] / self.size[0], self.image.shape[1] / self.size[1]


def _annotations(kind: str, record: dict, categories: dict | None, image: np.ndarray, header: ImageHeader, params: Syn4RemovalParams) -> Parsed:
    """Parse a record's annotations against the image's stored size (its header's: the array may be smaller)."""
    max_pixels = params.max_image_pixels
    stored = (header.height, header.width)
    if kind == "sa1b":
        doc = load_json(record["annotation"])
        image, turned = orient(image, header.orientation, declared_size(doc), stored)
        size = stored[::-1] if turned else stored
        return Parsed(parse_sa1b(doc, *size), None, image, size, turned)
    if kind == "openimages":  # masks are drawn on the stored pixels and come at their own size: no turn
        rows = load_json(record["annotation"])
        return Parsed(parse_openimages(rows, record["masks"] or [], categories, *stored, max_pixels), None, image, stored, False)
    ids = decode_panoptic_ids(record["segmentation"], max_pixels)
    image, turned = orient(image, header.orientation, ids.shape, stored)
    size = stored[::-1] if turned else stored
    if ids.shape != size:
        raise BadInput("segmentation_size_mismatch", f"panoptic PNG is {ids.shape[1]}x{ids.shape[0]}, image {size[1]}x{size[0]}")
    return Parsed(parse_panoptic(segments_info_of(load_json(record["annotation"])), categories, *size), ids, image, size, turned)


def _categories(kind: str, text: str) -> dict | None:
    """A unit's categories: panoptic id -> {"name", "isthing"}; Open Images label -> {"name", "count"}."""
    if kind == "panoptic":
        return load_panoptic_categories(load_json(text))
    if kind == "openimages":
        categories = load_json(text)
        if not isinstance(categories, dict):
            raise BadInput("malformed_json", "Open Images categories are not a mapping")
        return categories
    return None


def keep_passing(
    entities: list[Entity], scores: Sequence[Score], scorer: str, stage: str = "entity",
) -> tuple[list[Entity], list[Reject]]:
    """Keep the entities whose score passes; record the score on each and a reject for the others."""
    kept, rejects = [], []
    for entity, score in zip(entities, scores, strict=True):
        entity.scores[scorer] = round(score.value, 5)
        if score.passed:
            kept.append(entity)
        else:
            rejects.append(score.reject.at(entity.id, stage))
    return kept, rejects


def score_entities(entities: list[Entity], scorer: EntityScorer, stage: str = "entity") -> tuple[list[Entity], list[Reject]]:
    """Score the entities with `scorer` and keep those it passes."""
    return keep_passing(entities, scorer.score(entities) if entities else [], scorer.name, stage)


def _entities_of(
    record_id: str, parsed: Parsed, params: Syn4RemovalParams, scorer: EntityScorer, stats: Stats, class_sizes: dict[str, int],
) -> tuple[list[Entity], list[Reject]]:
    """Candidate entities of one image after the cheap checks (and a scorer that needs no pixels); the checks
    count annotated pixels, whatever size the image was decoded at."""
    height, width = parsed.size
    pixel_scale = float(np.sqrt(np.prod(parsed.scale)))
    candidates, rejects = [], []
    minimum = params.entities.min_class_entities
    for segment in parsed.annotations.segments:
        if not segment.thing:
            continue
        stats.counts["entity_candidates"] += 1
        entity = Entity(f"{record_id}#{segment.index}", record_id, segment, segment.area / (height * width), parsed.image, parsed.ids,
                        pixel_scale=pixel_scale)
        entity.scores.update(segment.scores)
        rejected = geometry_reject(segment, height, width, params.entities)
        size = class_sizes.get(segment.category)
        if not rejected and size is not None and size < minimum:
            rejected = Reject.because("rare_class", f"{segment.category!r} has {size} masks in its split < min_class_entities={minimum}")
        if rejected:
            rejects.append(rejected.at(entity.id, "entity"))
        else:
            candidates.append(entity)
    parts = nested_rejects([e.segment for e in candidates], params.entities.max_inside_larger)
    rejects += [parts[e.segment.index].at(e.id, "entity") for e in candidates if e.segment.index in parts]
    candidates = [e for e in candidates if e.segment.index not in parts]
    # a pixel scorer (CLIP) runs later, on the cut entities; the annotations' own checks come first all the same
    candidates, scored_out = score_entities(candidates, scorer.annotation if scorer.needs_pixels else scorer)
    rejects += scored_out
    return candidates, rejects


def materialize_all(entities: list[Entity], limits: EntityLimits) -> tuple[list[Entity], list[Reject]]:
    """Cut every entity now (for scorers that look at pixels); the unusable ones become rejects."""
    kept, rejects = [], []
    for entity in entities:
        rejected = materialize(entity, limits)
        if rejected:
            rejects.append(rejected.at(entity.id, "entity"))
        else:
            kept.append(entity)
    return kept, rejects


def _extract_record(
    record_id: str, record: dict, kind: str, categories: dict | None, class_sizes: dict, params: Syn4RemovalParams,
    scorer: EntityScorer, stats: Stats,
) -> tuple[list[Entity], list[Reject], Background | None]:
    """One record's entities, rejects and background (None: not kept)."""
    try:
        with stats.timed("decode"):
            image, header = decode_image(record["image"], params.max_image_pixels, params.backgrounds.resize_short_side)
    except BadInput as bad:
        return [], [bad.reject.at(record_id, "decode")], None
    try:
        with stats.timed("annotations"):
            parsed = _annotations(kind, record, categories, image, header, params)
    except BadInput as bad:
        return [], [bad.reject.at(record_id, "annotation")], None
    annotations, (height, width) = parsed.annotations, parsed.size
    stats.counts["exif_turned"] += parsed.turned
    stats.counts["images"] += 1
    stats.counts["reduced_decodes"] += parsed.scale[0] < 1
    rejects = [why.at(f"{record_id}#{i}", "annotation") for i, why in annotations.invalid.items()]
    with stats.timed("entities"):
        entities, cut = _entities_of(record_id, parsed, params, scorer, stats, class_sizes)
        rejects += cut
        if scorer.needs_pixels:
            entities, cut_out = materialize_all(entities, params.entities)
            rejects += cut_out
            for entity in entities:  # the model stage gets these, not the crops
                entity.model_inputs = scorer.model_inputs(entity)
    rejected = background_reject(height, width, params.backgrounds)
    if annotations.invalid and not annotations.segments:
        rejected = Reject.because("annotations_invalid", f"all {len(annotations.invalid)} annotations are unusable")
    if rejected:
        return entities, [*rejects, rejected.at(record_id, "background")], None
    sy, sx = parsed.scale
    instances = [i.scaled(sx, sy) for i in instances_of(annotations.segments, height, width, params.backgrounds)]
    background = Background(record_id, parsed.image, instances, parsed.turned)
    if params.backgrounds.resize_short_side:
        background = resize_background(background, params.backgrounds.resize_short_side)
    return entities, rejects, background


def extract_group(row: dict, params: Syn4RemovalParams, scorer: EntityScorer) -> Group:
    """Decode a reader row's images; cut their entities and keep them as backgrounds."""
    group = Group(row["unit"], list(row["consumed"]), int(row["unit_total"]))
    group.rejects += [Reject(**r) for r in row["rejects"]]
    stats = group.stats
    kind = row["kind"]
    try:
        categories = _categories(kind, row["categories"])
        class_sizes = {c["name"]: c["count"] for c in categories.values()} if kind == "openimages" else {}
    except BadInput as bad:  # the unit's categories are unusable: so is every record
        why = Reject.because(bad.reason, f"categories: {bad.detail}")
        group.rejects += [why.at(f"{group.unit}/{r['id']}", "annotation") for r in row["records"]]
        return group
    for record in row["records"]:
        record_id = f"{group.unit}/{record['id']}"
        stats.counts["records"] += 1
        try:
            entities, rejects, background = _extract_record(record_id, record, kind, categories, class_sizes, params, scorer, stats)
        except Exception as exc:  # data no check foresaw broke an operator: this record's reject, not the job's end
            log.warning("%s: unexpected %s while extracting it", record_id, type(exc).__name__, exc_info=True)
            group.rejects.append(Reject.unexpected(exc).at(record_id, "extract"))
            continue
        group.entities += entities
        group.rejects += rejects
        if background is not None:
            group.backgrounds.append(background)
    stats.counts["backgrounds_kept"] += len(group.backgrounds)
    return group


@dataclass(frozen=True)
class EntityScoring:
    """Syn4Removal's model stage: a scorer that looks at pixels (CLIP) on the entities of several groups in one call."""

    params: ClipScorerParams
    items_per_call: int = 4  # groups whose entities one call scores together
    name: ClassVar[str] = "score"

    def inputs(self, group: Group) -> list[Entity]:
        """Each entity as the scorer sees it: its category and prepared model inputs, no image. The group's
        entities give those inputs up (only the scorer reads them)."""
        views = [replace(e, source=None, ids=None, pixels=None, mask=None, bounds=None, scores={}) for e in group.entities]
        for entity in group.entities:
            entity.model_inputs = None
        return views

    def run(self, scorer: EntityScorer, inputs: Sequence[list[Entity]]) -> list[Scored]:
        entities = [e for views in inputs for e in views]
        scores = iter(scorer.score(entities) if entities else [])
        provenance = getattr(scorer, "provenance", None)
        return [Scored(scorer.name, list(islice(scores, len(views))), [v.scores for v in views], provenance) for views in inputs]

    def apply(self, group: Group, output: Scored) -> None:
        group.model = output.model
        group.stats.counts["entities_scored"] += len(group.entities)
        for entity, extra in zip(group.entities, output.extra, strict=True):
            entity.scores.update(extra)
        group.entities, rejects = keep_passing(group.entities, output.scores, output.scorer)
        group.rejects += rejects


class Scored(NamedTuple):
    """A group's output of the scoring step: the scorer, each entity's score and further scores, its provenance."""

    scorer: str
    scores: list[Score]
    extra: list[dict[str, float]]  # e.g. clip_context
    model: dict | None


def compose_group(group: Group, params: Syn4RemovalParams, config_hash: str) -> list[dict]:
    """Pair the group's entities and backgrounds and encode the triplets as WebDataset samples."""
    stats = group.stats
    pairs = pair_group(
        group.backgrounds, group.entities, params.pairing, params.placement, params.blending,
        params.mask_enhancement, params.entities, params.seed, group.rejects, params.quality,
    )
    samples = []
    encoding = stats.seconds["encode"]
    with stats.timed("compose"):
        for pair in pairs:
            with stats.timed("encode"):
                samples.append(_sample(pair, params, config_hash, group.model))
    stats.seconds["compose"] -= stats.seconds["encode"] - encoding  # compose time excludes encoding
    stats.counts["pairs"] += len(samples)
    stats.counts["entities_kept"] += sum(e.mask is not None for e in group.entities)
    stats.counts["entities_unused"] += sum(e.mask is None and e.source is not None for e in group.entities)
    return samples


def _sample(pair, params: Syn4RemovalParams, config_hash: str, model: dict | None = None) -> dict:
    """One triplet as a WebDataset sample: the files and the json metadata."""
    background, entity, composite = pair.background, pair.entity, pair.composite
    height, width = background.image.shape[:2]
    key = sample_key(background.record, config_hash, pair.index)
    meta = {
        "pipeline": PIPELINE,
        "key": key,
        "background": {"id": background.record, "width": width, "height": height, "exif_turned": background.exif_turned},
        "entity": {
            "id": entity.id,
            "annotation": entity.segment.source_id,
            "source": entity.record,
            "category": entity.category,
            "source_area_ratio": round(entity.area_ratio, 5),
            "source_box": [round(v, 1) for v in entity.segment.box],
            "scores": entity.scores,
        },
        **composite.meta,
        **({"model": model} if model else {}),
        "seed": params.seed,
        "config_hash": config_hash,
        "version": __version__,
    }
    # The source differs from the target only in the paste box's rows: its JPEG is the target's with those
    # rows re-encoded (the same bytes as a whole encode; outside the mask's blocks both decode identically)
    target = encode_jpeg(background.image, params.jpeg_quality, row_restarts=True)
    _, top, _, box_height = composite.meta["paste"]["box"]
    return {
        "__key__": key,
        "source.jpg": splice_jpeg_rows(target, composite.source, (top, top + box_height), params.jpeg_quality),
        "target.jpg": target,
        "mask.png": encode_png_gray(composite.mask * np.uint8(255)),
        "alpha.png": encode_png_gray(composite.alpha),
        "json": sample_json(meta),
    }
