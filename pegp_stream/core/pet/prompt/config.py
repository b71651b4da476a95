"""The prompt paradigm's configuration (`learner.pet` with `kind: prompt`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pegp_stream.core.pet.registry import PetConfig
from pegp_stream.schema import Positive


class PromptConfig(PetConfig):
    """Prompt-tuning: `length` learned tokens inserted after the prefix (CLS) tokens at `blocks[0]`;
    further blocks (VPT-deep) overwrite those token slots with their own prompts."""

    kind: Literal["prompt"] = "prompt"
    length: Positive = Field(5, description="number of prompt tokens")
    blocks: tuple[int, ...] = Field((0,), min_length=1, description="blocks whose input gets prompts")
    init_std: float = Field(0.02, gt=0.0, description="std of the normal init of prompt tokens")
