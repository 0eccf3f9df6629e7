"""Base class of operator parameters: typed, validated, immutable, unknown keys rejected.

Each operator defines its parameters once, next to its code; the pipeline configs compose them,
so a YAML key, its default, its bounds and its description live in one place.
"""

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
