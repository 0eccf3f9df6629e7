"""Base class of operator parameters: typed, validated, immutable, unknown keys rejected.

Each operator defines its parameters once, next to its code; the pipeline configs compose them,
so a YAML key, its default, its bounds and its description live in one place.
"""

from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator

# Field(..., json_schema_extra=RUNTIME): how or where a step runs (batch size, device, actors), not what it
# produces; such fields stay out of the config hash, so changing them keeps an output's sample keys.
RUNTIME = {"runtime": True}


def _min_max_actors(concurrency: tuple[int, int]) -> tuple[int, int]:
    if not 1 <= concurrency[0] <= concurrency[1]:
        raise ValueError("concurrency is (min, max) actors with 1 <= min <= max")
    return concurrency


# (min, max) actors of a Ray actor stage (a model stage)
Concurrency = Annotated[tuple[int, int], AfterValidator(_min_max_actors)]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # (low, high, strict): field `low` must be below (strict) or at most `high`
    ORDERED: ClassVar[tuple[tuple[str, str, bool], ...]] = ()

    @model_validator(mode="after")
    def _check_order(self):
        for low, high, strict in self.ORDERED:
            a, b = getattr(self, low), getattr(self, high)
            if a > b or (strict and a == b):
                raise ValueError(f"{low} ({a}) must {'be below' if strict else 'not exceed'} {high} ({b})")
        return self
