"""Fixtures of the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from sample_inputs import write_loose_sa1b


@pytest.fixture
def loose_sa1b(tmp_path) -> Path:
    write_loose_sa1b(tmp_path / "loose", 12)
    return tmp_path / "loose"
