"""Small records shared by the operators: rejects, instance boxes, sample keys."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reject:
    """One skipped input or candidate; becomes a row of ``rejects/`` and a summary count."""

    input: str  # what was skipped: "<unit>/<record>", "<unit>/<record>#<segment>", ...
    stage: str  # where: read, decode, annotation, entity, background, compose
    reason: str  # short stable code, e.g. "truncated_image"
    detail: str = ""  # human-readable specifics (values, limits)

    def to_dict(self) -> dict:
        return {"input": self.input, "stage": self.stage, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class Instance:
    """An object already present in an image: its box (x, y, w, h in px), mask area and category."""

    box: tuple[float, float, float, float]
    area: float
    category: str | None = None


def sample_key(record: str, config_hash: str, index: int) -> str:
    """Deterministic WebDataset key: the record's name, a digest of (config, full record id), the index.

    The same config and inputs give the same keys; no dots, so WebDataset splits extensions correctly.
    """
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", record.rsplit("/", 1)[-1])[-48:]
    digest = hashlib.blake2b(f"{config_hash}/{record}".encode(), digest_size=5).hexdigest()
    return f"{stem}-{digest}-{index:02d}"
