"""Fixtures of the training tests: tiny random erasers saved as model folders, and pipeline outputs to train on.

The outputs are made by the project's own pipelines from the shared sample data (a Syn4Removal run over
loose copies of the SA-1B records, a Video4Removal run over the synthetic static clip), once per session,
in a subprocess of the `pairmine` CLI.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import cli
from models import tiny_eradiff, tiny_omnieraser, tiny_smarteraser
from sample_inputs import TESTDATA, write_loose_sa1b


@pytest.fixture(scope="session")
def smarteraser_parts(tmp_path_factory) -> dict[str, str]:
    return tiny_smarteraser(tmp_path_factory.mktemp("tiny-smarteraser"))


@pytest.fixture(scope="session")
def eradiff_parts(tmp_path_factory) -> dict[str, str]:
    return tiny_eradiff(tmp_path_factory.mktemp("tiny-eradiff"))


@pytest.fixture(scope="session")
def omnieraser_parts(tmp_path_factory) -> dict[str, str]:
    return tiny_omnieraser(tmp_path_factory.mktemp("tiny-omnieraser"))


@pytest.fixture(scope="session")
def training_outputs(tmp_path_factory) -> dict[str, Path]:
    """{"syn": output, "video": output}: 76 Syn4Removal triplets in 2 shards, 2 Video4Removal pairs in 1."""
    root = tmp_path_factory.mktemp("training-outputs")
    write_loose_sa1b(root / "loose", 40)
    cli("syn4removal", "--input", str(root / "loose"), "--output", str(root / "syn"), "--no-progress",
             "--set", "pairing.pairs_per_background=2", "--set", "shards.max_samples=16")
    cli("video4removal", "--input", str(TESTDATA / "video" / "synth_static_dev.mp4"), "--output", str(root / "video"), "--no-progress")
    return {"syn": root / "syn", "video": root / "video"}


@pytest.fixture
def outputs_copy(training_outputs, tmp_path) -> dict[str, Path]:
    """A private copy of the outputs, for tests that damage them."""
    return {name: Path(shutil.copytree(path, tmp_path / name)) for name, path in training_outputs.items()}
