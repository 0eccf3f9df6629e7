"""Readers of a pipeline output and the contract checks (docs/FORMATS.md) every test applies to it."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from pairmine.dataset import missing_files



def shard_paths(output: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(output, "shards", "*.tar")))


def read_samples(output: str) -> list[dict]:
    """Every sample of every shard, raw bytes, read with webdataset."""
    paths = shard_paths(output)
    return list(wds.WebDataset(paths, shardshuffle=False, empty_check=False)) if paths else []


def read_parquet_dir(path: str) -> list[dict]:
    files = sorted(glob.glob(os.path.join(path, "*.parquet")))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def decode(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)))


def check_sample(sample: dict, pipeline: str) -> dict:
    """Assert the output contract on one sample; returns its decoded json."""
    assert not missing_files(sample, pipeline), f"{sample['__key__']} lacks {missing_files(sample, pipeline)}"
    meta = json.loads(sample["json"])
    assert meta["pipeline"] == pipeline and meta["key"] == sample["__key__"]
    assert meta["config_hash"] and meta["version"]
    source, target, mask = (decode(sample[k]) for k in ("source.jpg", "target.jpg", "mask.png"))
    assert source.ndim == 3 and source.shape[2] == 3 and target.shape == source.shape
    assert mask.ndim == 2 and mask.dtype == np.uint8 and mask.shape == source.shape[:2]
    assert set(np.unique(mask)) <= {0, 255}
    assert 0 < np.count_nonzero(mask) < mask.size, "mask is empty or the whole image"
    if pipeline == "syn4removal":
        assert decode(sample["alpha.png"]).shape == mask.shape
        # both JPEGs come from the same encoder: outside the 16-px blocks touching the mask they are identical
        near = cv2.dilate((mask > 0).astype(np.uint8), np.ones((33, 33), np.uint8)) > 0
        assert np.array_equal(source[~near], target[~near]), "source differs from target outside the mask"
    return meta


PAIRMINE = str(Path(sys.executable).with_name("pairmine"))


def cli(*args: str, timeout: float = 600, env: dict | None = None, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The `pairmine` CLI in a subprocess (its own Ray), with a timeout that turns a hang into a failure."""
    done = subprocess.run([PAIRMINE, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)
    if check:
        assert done.returncode == 0, f"pairmine {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """The CLI's `main` in this process, for commands that start no Ray (dry runs, config errors, erase,
    evaluate): the same result as `cli` without a new interpreter's ~10 s of torch and diffusers imports."""
    from pairmine.pipelines.cli import main

    root, ours = logging.getLogger(), logging.getLogger("pairmine")
    saved = (list(root.handlers), root.level, ours.level)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        root.handlers, root.level, ours.level = saved
    return subprocess.CompletedProcess(["pairmine", *args], code, out.getvalue(), err.getvalue())


def through_stage(actor, items: list) -> list:
    """Items through a model stage's actor (``StageActor``) as the pipeline sends them: only their inputs go in,
    and the outputs that come back are applied to the items here, as the finish step does."""
    import pandas as pd

    from pairmine.pipelines.model_stages import INPUTS, ITEM, OUTPUT, Sized, with_output

    batch = pd.DataFrame({ITEM: pd.Series(range(len(items)), dtype=object),
                          INPUTS: pd.Series([Sized(actor.stage.inputs(item)) for item in items], dtype=object)})
    returned = actor(batch)
    assert INPUTS not in returned and list(returned[ITEM]) == list(range(len(items))), "the rows come back without their inputs"
    return [with_output(actor.stage, item, cell) for item, cell in zip(items, returned[OUTPUT], strict=True)]


def panoptic_row(panoptic, *, ids=("a",), annotation=None, segmentation=None, categories=None) -> dict:
    annotation = panoptic["annotation"] if annotation is None else annotation
    records = [
        {
            "id": f"{panoptic['stem']}_{i}",
            "image": panoptic["image"],
            "annotation": annotation if isinstance(annotation, bytes) else json.dumps(annotation).encode(),
            "segmentation": panoptic["png"] if segmentation is None else segmentation,
        }
        for i in ids
    ]
    return {
        "unit": "val2017",
        "kind": "panoptic",
        "categories": json.dumps(panoptic["categories"] if categories is None else categories),
        "records": records,
        "rejects": [],
        "consumed": [r["id"] for r in records],
        "unit_total": len(records),
    }
