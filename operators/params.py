"""Base class of operator parameters: typed, validated, immutable, unknown keys rejected.

Each operator defines its parameters once, next to its code; the pipeline configs compose them,
so a YAML key, its default, its bounds and its description live in one place.
"""

import typing
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

# Field(..., json_schema_extra=RUNTIME): how or where a step runs (batch size, device, actors), not what it
# produces; such fields stay out of the config hash, so changing them keeps an output's sample keys.
RUNTIME = {"runtime": True}


def _min_max_actors(concurrency: tuple[int, int]) -> tuple[int, int]:
    if not 1 <= concurrency[0] <= concurrency[1]:
        raise ValueError("concurrency is (min, max) actors with 1 <= min <= max")
    return concurrency


def _admits(annotation, kinds: tuple[type, ...]) -> bool:
    """Whether a field's type is, or holds (a union, Annotated, Optional), one of `kinds`."""
    return annotation in kinds or any(_admits(arg, kinds) for arg in typing.get_args(annotation))


# (min, max) actors of a Ray actor stage (a model stage)
Concurrency = Annotated[tuple[int, int], AfterValidator(_min_max_actors)]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # (low, high, strict): field `low` must be below (strict) or at most `high`
    ORDERED: ClassVar[tuple[tuple[str, str, bool], ...]] = ()

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value, info: ValidationInfo):
        """`seed: true` is a mistake, not 1: pydantic's lax mode would take a boolean for a number."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and _admits(annotation, (int, float)) and not _admits(annotation, (bool,)):
            raise ValueError("expected a number, not a boolean")
        return value

    @model_validator(mode="after")
    def _check_order(self):
        for low, high, strict in self.ORDERED:
            a, b = getattr(self, low), getattr(self, high)
            if a > b or (strict and a == b):
                raise ValueError(f"{low} ({a}) must {'be below' if strict else 'not exceed'} {high} ({b})")
        return self
