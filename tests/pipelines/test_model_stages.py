"""Model stages inside the pipelines: tiny random models saved as checkpoints, loaded by Ray actors."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import ClassVar

import numpy as np
import pytest
from helpers import check_sample, read_parquet_dir, read_samples
from models import tiny_clip, tiny_gdino, tiny_sam2
from sample_inputs import TESTDATA

from pairmine.operators.checkpoints import CheckpointError
from pairmine.operators.model_stage import ModelStageParams
from pairmine.operators.stats import Stats
from pairmine.pipelines.model_stages import ITEM, ActorClock, around_model, nbytes
from pairmine.pipelines.summary import build_summary, format_summary
from pairmine.pipelines.run import pipeline_data_context, run
from pairmine.pipelines.syn4removal import SYN4REMOVAL
from pairmine.pipelines.video4removal import VIDEO4REMOVAL

SA1B_TAR = str(TESTDATA / "sa1b" / "sa_000000.tar")


def _clip(tmp_path, *extra) -> list[str]:
    config, checkpoint = tiny_clip(tmp_path / "clip")
    # random weights give cosines around 0: the cosine scale with a threshold between the scores
    return [
        "entities.scorer.name=clip", f"entities.scorer.model={config}", f"entities.scorer.checkpoint={checkpoint}",
        "entities.scorer.scale=cosine", "entities.scorer.batch_size=3", *extra,
    ]


def test_syn4removal_with_the_clip_scorer_actor(tmp_path, ray_local):
    out = tmp_path / "out"
    summary = run(SYN4REMOVAL, [SA1B_TAR], str(out), overrides=_clip(tmp_path, "entities.scorer.threshold=-1"), progress_bars=False)
    samples = read_samples(str(out))
    assert samples and summary["counts"]["entities_scored"] > 0
    model = _clip(tmp_path)[1].split("=", 1)[1]
    for sample in samples:
        meta = check_sample(sample, "syn4removal")
        assert isinstance(meta["entity"]["scores"]["clip"], float)
        assert meta["model"] == {"name": "clip", "model": model, "device": "cpu", "precision": "fp32"}  # how the scores were made
    score = summary["stages"]["score"]
    assert score["items"] == summary["counts"]["entities_scored"] and 0 < score["actor_busy_fraction"] <= 1
    assert score["actors"] == 1 and 0 < score["actor_start_seconds"] < summary["wall_seconds"], "the model load, reported once"
    assert not any(k.startswith("score_") for k in summary["counts"])


def test_an_actors_model_load_is_reported_once_per_actor():
    """Each actor's load goes with its first call's first item; the summary gives the actors and their mean load."""
    first, second = ActorClock(start_seconds=3.0), ActorClock(start_seconds=5.0)
    items = [Stats() for _ in range(5)]
    for clock, calls in ((first, [items[0:2], items[2:3]]), (second, [items[3:5]])):
        for call in calls:
            clock.record("score", 0.0, call, [1.0] * len(call))
    assert [i.seconds["score_start"] for i in items] == [3.0, 0, 0, 5.0, 0]
    results = [{"stats": i.to_dict(), "shards": []} for i in items]
    summary = build_summary(results, 10.0, {"score": ()}, pipeline="syn4removal", run="r", output="o", units={"planned": 1, "already_complete": 0},
                            output_totals={"samples": 0, "shards": 0})
    assert summary["stages"]["score"]["actors"] == 2 and summary["stages"]["score"]["actor_start_seconds"] == 4.0
    assert "score_start" not in summary["counts"] and "score_start" not in summary["stages"]
    assert "2 actors, 4.0s each to load" in format_summary(summary)


def test_clip_threshold_rejects_with_the_score(tmp_path, ray_local):
    out = tmp_path / "out"
    summary = run(SYN4REMOVAL, [SA1B_TAR], str(out), overrides=_clip(tmp_path, "entities.scorer.threshold=1"), progress_bars=False)
    rejected = [r for r in read_parquet_dir(str(out / "rejects")) if r["reason"] == "clip_score_below_threshold"]
    assert len(rejected) == summary["counts"]["entities_scored"] > 0, "a cosine threshold of 1 keeps nothing"
    assert all("clip cosine" in r["detail"] and "< 1" in r["detail"] for r in rejected)
    assert summary["written"]["samples"] == 0


def test_a_missing_checkpoint_stops_the_run_before_ray_starts(tmp_path):
    overrides = ["entities.scorer.name=clip", f"entities.scorer.checkpoint={tmp_path / 'nope.pt'}"]
    with pytest.raises(CheckpointError, match="nope.pt"):
        run(SYN4REMOVAL, [SA1B_TAR], str(tmp_path / "out"), overrides=overrides, progress_bars=False)
    assert not (tmp_path / "out" / "shards").exists()


def test_a_checkpoint_of_another_model_stops_the_run_before_ray_starts(tmp_path):
    config, _ = tiny_clip(tmp_path / "a", width=32)
    _, other = tiny_clip(tmp_path / "b", name="wider-clip", width=64)
    overrides = ["entities.scorer.name=clip", f"entities.scorer.model={config}", f"entities.scorer.checkpoint={other}"]
    with pytest.raises(CheckpointError, match=r"wider-clip\.pt does not fit model pairmine-tiny-clip"):
        run(SYN4REMOVAL, [SA1B_TAR], str(tmp_path / "out"), overrides=overrides, progress_bars=False)
    assert not (tmp_path / "out" / "shards").exists()


def test_runtime_settings_of_a_model_stage_keep_the_sample_keys(tmp_path, ray_local):
    first, second = tmp_path / "a", tmp_path / "b"
    run(SYN4REMOVAL, [SA1B_TAR], str(first), overrides=_clip(tmp_path, "entities.scorer.threshold=-1"), progress_bars=False)
    run(SYN4REMOVAL, [SA1B_TAR], str(second), progress_bars=False,
        overrides=_clip(tmp_path, "entities.scorer.threshold=-1", "entities.scorer.batch_size=16", "entities.scorer.concurrency=[1,2]",
                        "entities.scorer.rows_per_call=1", "entities.scorer.actor_cpus=0.5"))
    keys = lambda out: sorted(json.loads(s["json"])["key"] for s in read_samples(str(out)))  # noqa: E731
    assert keys(first) == keys(second)


def test_video4removal_with_the_gdino_sam2_masker_actor(tmp_path, ray_local):
    """Random weights detect nothing meaningful, so every pair must end as a reject with the masker's
    reason (no motion explained), or as a sample that meets the contract: never a half-made sample."""
    models = tiny_gdino(tmp_path / "gdino") | tiny_sam2(tmp_path / "sam2")
    overrides = ["masker.name=gdino_sam2", "masker.detect_short_side=256", "masker.box_threshold=0.05", *(f"masker.{k}={v}" for k, v in models.items())]
    out = tmp_path / "out"
    summary = run(VIDEO4REMOVAL, [str(TESTDATA / "video" / "synth_static_dev.mp4")], str(out), overrides=overrides, progress_bars=False)
    counts, stage = summary["counts"], summary["stages"]["mask"]
    assert counts["masked"] == counts["pairs_selected"] > 0 and 0 < stage["actor_busy_fraction"] <= 1
    rejects = [r for r in read_parquet_dir(str(out / "rejects")) if r["stage"] == "mask"]
    assert len(rejects) + summary["written"]["samples"] == counts["pairs_selected"]
    assert all(r["reason"] in ("no_detection_explains_motion", "mask_full", "invalid_mask") for r in rejects)
    for sample in read_samples(str(out)):
        meta = check_sample(sample, "video4removal")
        assert meta["masker"] == "gdino_sam2" and meta["model"]["device"] == "cpu" and meta["model"]["precision"] == "fp32"


# -- the adapter: how items cross an actor stage ------------------------------------------------------------------


@dataclasses.dataclass
class Frames:
    frames: list
    total: int = 0
    process: int = 0  # the pid that ran the model on it
    stats: Stats = dataclasses.field(default_factory=Stats)
    loaded_in: list = dataclasses.field(default_factory=list)  # the pid of every process that unpickled it, in turn
    unit: str = "frames"  # the input unit it belongs to

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state | {"loaded_in": [*state["loaded_in"], os.getpid()]})


class Summing(ModelStageParams):
    """A model stage whose model is numpy's sum: the adapter's wiring with a real actor pool, no weights."""

    def check_files(self) -> None:
        pass

    def build(self):
        return np.sum


@dataclasses.dataclass(frozen=True)
class SumStage:
    params: Summing
    items_per_call: int = 2
    name: ClassVar[str] = "sum"

    def inputs(self, item: Frames) -> list:
        return item.frames

    def run(self, model, inputs) -> list:
        return [(int(sum(model(frame) for frame in frames)), os.getpid()) for frames in inputs]

    def apply(self, item: Frames, output) -> None:
        item.total, item.process = output


def test_a_unit_of_work_is_sized_by_its_arrays_for_ray_datas_memory_budgets(ray_local):
    import pyarrow as pa
    from ray.data.block import BlockAccessor

    from pairmine.pipelines.model_stages import INPUTS, _prepare_frame

    item = Frames([np.zeros((300, 400, 3), np.uint8), {"mask": np.zeros((300, 400), bool)}], 7)
    assert nbytes(item) == 300 * 400 * 4
    image = item.frames[0]
    assert nbytes([image, image[10:20, 5:50], {"again": image}]) == image.nbytes, "views and repeats: the memory once"
    block = _prepare_frame(pa.table({"id": [0]}), lambda row: {ITEM: item, "id": row["id"]}, SumStage(Summing()))
    accessor = BlockAccessor.for_block(block)
    assert accessor.size_bytes() >= 2 * nbytes(item), "what Ray Data counts in its memory budgets: the parked item and its inputs"
    assert block[ITEM][0].size == nbytes(item) and block[INPUTS][0].item is item.frames


def test_only_the_models_inputs_cross_an_actor_stage(ray_local):
    """The item waits in the object store while its inputs go through the actor: the actor's process never
    loads it (the whole item went there and back, copied again on the way out), and the finish step reads its
    arrays in place."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    pipeline_data_context()

    def prepare(row):
        return {ITEM: Frames([np.full((200, 300, 3), row["id"], np.uint8)] * 2), "id": row["id"], "prepared_in": os.getpid()}

    def finish(row):
        item = row[ITEM]
        return {"id": row["id"], "total": item.total, "in_place": not item.frames[0].flags.writeable, "timed": item.stats.seconds["sum"] > 0,
                "prepared_in": row["prepared_in"], "modelled_in": item.process, "loaded_in": item.loaded_in, "columns": sorted(row)}

    rows = ray_local.data.range(5, override_num_blocks=1)
    out = sorted(around_model(rows, prepare, finish, SumStage(Summing())).take_all(), key=lambda r: r["id"])
    assert [r["total"] for r in out] == [2 * 200 * 300 * 3 * k for k in range(5)], "every item went through the model once"
    assert all(r["timed"] for r in out)
    assert all(r["in_place"] for r in out), "the frames were read from the object store in place, not unpickled into copies"
    assert not {r["prepared_in"] for r in out} & {r["modelled_in"] for r in out}, "prepare ran in CPU tasks, not fused into the actor"
    assert all(len(r["loaded_in"]) == 1 and r["modelled_in"] not in r["loaded_in"] for r in out), "the item never went to the actor"
    assert out[0]["columns"] == ["id", ITEM, "prepared_in"], "finish sees the rows as prepare made them"


def test_an_item_lost_with_its_worker_is_left_for_the_next_run(ray_local):
    """A parked item goes with the worker that put it (a crash, the OOM killer, a lost node) and Ray cannot make
    it again: its row accounts for nothing (its inputs are not marked done, so the next run mines them) and is
    counted, where the whole run used to stop."""
    from ray.exceptions import OwnerDiedError

    from pairmine.pipelines.model_stages import LOST, OUTPUT, Parked, Sized, _finish_row

    class Gone(Parked):
        """Parked by a worker that died since: Ray frees such objects (when, varies), then this is what get raises."""

        def fetch(self):
            raise OwnerDiedError(self.ref.hex(), None, "")

    item = Frames([np.zeros((10, 10), np.uint8)])
    item.unit = "sa_000001.tar"
    parked = Gone(item)
    finished = []
    row = _finish_row({ITEM: parked, OUTPUT: Sized(((0, 0), Stats())), "id": 0}, SumStage(Summing()), finished.append)
    assert not finished, "finish never ran on a lost item"
    assert (row["unit"], row["consumed"], row["unit_total"], row["samples"]) == ("sa_000001.tar", [], -1, [])
    assert json.loads(row["stats"])["counts"] == {LOST: 1}
    results = [{"stats": json.loads(row["stats"]), "shards": []}]
    summary = build_summary(results, 1.0, {}, pipeline="syn4removal", run="r", output="o", units={"planned": 1, "already_complete": 0},
                            output_totals={"samples": 0, "shards": 0})
    assert "lost: 1 groups / segments went with a worker" in format_summary(summary)


def test_a_worker_that_dies_mid_run_costs_at_most_the_items_it_held(ray_local, tmp_path):
    """A prepare worker killed once (its task retried elsewhere): the run still ends, and every row is either
    finished or counted lost."""
    from ray import cloudpickle

    from pairmine.pipelines.model_stages import LOST

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    pipeline_data_context()
    marker = tmp_path / "died"

    def prepare(row):
        if row["id"] == 3 and not marker.exists():
            marker.touch()
            os._exit(1)  # the worker dies, with whatever it parked before
        item = Frames([np.full((50, 60), row["id"], np.uint8)])
        item.unit = f"unit-{row['id']}"
        return {ITEM: item, "id": row["id"]}

    def finish(row):
        return {"unit": row[ITEM].unit, "consumed": [str(row["id"])], "unit_total": 1, "samples": [], "keys": [], "phashes": [], "quality": [],
                "rejects": [], "stats": json.dumps(row[ITEM].stats.to_dict())}

    rows = ray_local.data.range(6, override_num_blocks=6)
    out = around_model(rows, prepare, finish, SumStage(Summing())).take_all()
    assert marker.exists() and len(out) == 6
    lost = [r for r in out if json.loads(r["stats"])["counts"].get(LOST)]
    assert all(r["consumed"] == [] and r["unit_total"] == -1 for r in lost)
    assert sorted(r["unit"] for r in out) == [f"unit-{k}" for k in range(6)], "each row once: finished, or lost and counted"


def test_actors_that_would_hold_every_cpu_are_refused_before_any_work(tmp_path):
    """With ray.num_cpus 1 a 1-CPU scorer actor left the decode tasks none: the run waited forever, silently."""
    from pairmine.pipelines.config import ConfigError

    for reserve in (["ray.num_cpus=1"], ["ray.num_cpus=2", "entities.scorer.concurrency=[2,2]", "entities.scorer.actor_cpus=0.6"]):
        with pytest.raises(ConfigError, match=r"leaving less than the one CPU each decode / compose task needs"):
            run(SYN4REMOVAL, [SA1B_TAR], str(tmp_path / "out"), overrides=_clip(tmp_path, "entities.scorer.threshold=-1", *reserve), progress_bars=False)
        assert not (tmp_path / "out" / "shards").exists()
