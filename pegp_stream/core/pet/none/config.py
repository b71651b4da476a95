"""The none paradigm's configuration (`learner.pet` with `kind: none`)."""

from __future__ import annotations

from typing import Literal

from pegp_stream.core.pet.registry import PetConfig


class NoPetConfig(PetConfig):
    """No PET tensors: the backbone stays exactly as pretrained and only the head learns (the frozen-backbone
    reference: a linear probe, or class means of frozen features with `head.kind: ncm`)."""

    kind: Literal["none"] = "none"
