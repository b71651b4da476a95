"""PET paradigms, one folder each (its config class, its layers, its registration with test hooks: see
registry.py and docs/architecture.md "Adding a PET paradigm"). Each attaches to a frozen timm VisionTransformer
by wrapping modules (the frozen module stays as `base_layer`), declares its trainable tensors and protected
spaces, and can be detached to give the original model back."""

from __future__ import annotations

# isort: off
# Importing a paradigm's folder registers it; this order is the order the configuration reference lists them.
from pegp_stream.core.pet import none, prompt, prefix, adapter, lora  # noqa: F401
# isort: on
from pegp_stream.core.pet.base import Attachment, FeatureTaps
from pegp_stream.core.pet.registry import (
           PET_CONFIGS,
           Paradigm,
           PetConfig,
           attach,
           paradigm,
           paradigms,
           register,
           unregister,
)
from pegp_stream.core.projection.spec import SpaceSpec

__all__ = ["PET_CONFIGS", "Attachment", "FeatureTaps", "Paradigm", "PetConfig", "SpaceSpec", "attach", "paradigm",
           "paradigms", "register", "unregister"]
