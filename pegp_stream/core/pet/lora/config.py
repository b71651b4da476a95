"""The lora paradigm's configuration (`learner.pet` with `kind: lora`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pegp_stream.core.pet.registry import PetConfig
from pegp_stream.schema import Positive


class LoraConfig(PetConfig):
    """LoRA on chosen linears: delta W = (alpha / rank) * B A, B initialised to zero.
    Targets: `qkv` (the whole fused projection), `q`/`k`/`v` (its slices), `proj`, `fc1`, `fc2`."""

    kind: Literal["lora"] = "lora"
    rank: Positive = Field(4, description="LoRA rank r")
    alpha: float = Field(8.0, gt=0.0, description="scale numerator; the update is scaled by alpha / rank")
    targets: tuple[Literal["qkv", "q", "k", "v", "proj", "fc1", "fc2"], ...] = Field(
        ("q", "v"), min_length=1, description="linears of each chosen block that get a LoRA pair"
    )
    blocks: tuple[int, ...] | None = Field(None, description="block indices; None = every block")

    @field_validator("targets")
    @classmethod
    def _qkv_excludes_slices(cls, targets: tuple[str, ...]) -> tuple[str, ...]:
        if "qkv" in targets and {"q", "k", "v"} & set(targets):
            raise ValueError("'qkv' already covers its q/k/v slices; list either 'qkv' or slices")
        if len(set(targets)) != len(targets):
            raise ValueError("targets must not repeat")
        return targets
