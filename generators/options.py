"""The options every generator shares (a leaf: pydantic only, so the command line checks a value
such as `generator.options.pairs_per_type=0` before torch is imported), and the (low, high) range
type methods use for an option they draw from."""

from __future__ import annotations

import operator
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class GeneratorOptions(BaseModel):
    """Options every generator shares; methods subclass this with their own fields."""

    model_config = ConfigDict(extra="forbid")
    pairs_per_type: int = Field(10, ge=1)
    batch_size: int = Field(4, ge=1)  # requests per predict step


def draw_range(kind: type, lowest: float | None = None, highest: float | None = None, *,
               above_lowest: bool = False, low_below_high: bool = False):
    """A `(low, high)` option a method draws from (U(low, high), U{low..high}): `lowest <= low <=
    high <= highest`; `above_lowest` makes the first `<` a strict one, `low_below_high` the middle
    one (numpy's `integers(low, high)` excludes high, so low == high draws nothing). A bad value
    fails as `key=[16, 2]: should be [low, high] with 0 < low <= high`."""
    first = operator.lt if above_lowest else operator.le
    middle = operator.lt if low_below_high else operator.le
    chain = " ".join(part for part in (
        f"{lowest:g} {'<' if above_lowest else '<='}" if lowest is not None else "",
        f"low {'<' if low_below_high else '<='} high",
        f"<= {highest:g}" if highest is not None else "") if part)

    def check(value: tuple) -> tuple:
        low, high = value
        if not (middle(low, high) and (lowest is None or first(lowest, low)) and (highest is None or high <= highest)):
            raise ValueError(f"should be [low, high] with {chain}")
        return value

    return Annotated[tuple[kind, kind], AfterValidator(check)]
