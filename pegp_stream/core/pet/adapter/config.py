"""The adapter paradigm's configuration (`learner.pet` with `kind: adapter`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pegp_stream.core.pet.registry import PetConfig
from pegp_stream.schema import Positive


class AdapterConfig(PetConfig):
    """Bottleneck adapter (down, activation, up) in parallel to the attention or MLP sub-layer.
    Up is initialised to zero, so a new adapter leaves the backbone's function unchanged. Both linears
    are bias-free: a bias would move every old output and no feature space can protect it."""

    kind: Literal["adapter"] = "adapter"
    rank: Positive = Field(8, description="bottleneck width r")
    blocks: tuple[int, ...] | None = Field(None, description="block indices; None = every block")
    placement: Literal["mlp", "attn"] = Field("mlp", description="sub-layer the adapter runs beside")
    scale: float = Field(1.0, gt=0.0, description="multiplier on the adapter output")
    activation: Literal["relu", "gelu"] = Field("relu", description="activation between down and up")
