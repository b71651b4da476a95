"""No PET: the frozen-backbone reference, where only the head learns (config.py: `kind: none`)."""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pegp_stream.core.pet.base import Attachment, FeatureTaps
from pegp_stream.core.pet.none.config import NoPetConfig
from pegp_stream.core.pet.registry import Paradigm, ProjectionOptions, register


def attach_none(
    model: VisionTransformer, config: NoPetConfig, taps: FeatureTaps, projection: ProjectionOptions
) -> Attachment:
    """Nothing is wrapped: no PET tensor and no protected space."""
    return Attachment(modules=nn.ModuleDict(), spaces=[])


register(Paradigm("none", NoPetConfig, attach_none, trains=False))

__all__ = ["NoPetConfig", "attach_none"]
