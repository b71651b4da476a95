"""The prefix paradigm's configuration (`learner.pet` with `kind: prefix`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pegp_stream.core.pet.registry import PetConfig
from pegp_stream.schema import Positive


class PrefixConfig(PetConfig):
    """Prefix-tuning: learned key and value prefixes of `length` at the chosen blocks' attention."""

    kind: Literal["prefix"] = "prefix"
    length: Positive = Field(5, description="number of key/value prefix tokens per block")
    blocks: tuple[int, ...] | None = Field(None, description="block indices; None = every block")
    init_std: float = Field(0.02, gt=0.0, description="std of the normal init of key and value prefixes")
    freeze_values_after_consolidation: bool = Field(
        False, description="stop training value prefixes after the first consolidation"
    )
