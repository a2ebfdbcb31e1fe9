"""The options every generator shares (a leaf: pydantic only, so the command line checks a value
such as `generator.options.pairs_per_type=0` before torch is imported)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GeneratorOptions(BaseModel):
    """Options every generator shares; methods subclass this with their own fields."""

    model_config = ConfigDict(extra="forbid")
    pairs_per_type: int = Field(10, ge=1)
    batch_size: int = Field(4, ge=1)  # requests per predict step
