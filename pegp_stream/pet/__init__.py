"""PET paradigms, registered by name. Each attaches to a frozen timm VisionTransformer by wrapping
modules (the frozen module stays as `base_layer`), declares its trainable tensors and protected spaces,
and can be detached to give the original model back."""

from __future__ import annotations

from collections.abc import Callable

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..config import PET_CONFIGS, PetConfig, ProjectionConfig
from ..errors import ConfigError
from .adapter import attach_adapter
from .base import Attachment, FeatureTaps, SpaceSpec
from .lora import attach_lora
from .prefix import attach_prefix
from .prompt import attach_prompt

Attach = Callable[[VisionTransformer, PetConfig, FeatureTaps, ProjectionConfig], Attachment]
_REGISTRY: dict[str, Attach] = {}


def register_paradigm(kind: str, attach: Attach) -> None:
    """Register a PET paradigm under `kind`; its config class must be in `config.PET_CONFIGS`."""
    if kind in _REGISTRY:
        raise ValueError(f"PET paradigm {kind!r} is already registered")
    if kind not in PET_CONFIGS:
        raise ValueError(f"PET paradigm {kind!r} has no config class in pegp_stream.config.PET_CONFIGS")
    _REGISTRY[kind] = attach


def paradigms() -> list[str]:
    return sorted(_REGISTRY)


def attach(
    model: VisionTransformer, config: PetConfig, taps: FeatureTaps, projection: ProjectionConfig
) -> Attachment:
    """Attach the paradigm `config.kind` to `model` in place (undo with `Attachment.detach`)."""
    if config.kind not in _REGISTRY:
        raise ConfigError("pet.kind", f"unknown PET kind {config.kind!r}; valid PET kinds: {', '.join(paradigms())}")
    return _REGISTRY[config.kind](model, config, taps, projection)


register_paradigm("none", lambda m, c, t, p: Attachment(modules=nn.ModuleDict(), spaces=[]))
register_paradigm("prompt", lambda m, c, t, p: attach_prompt(m, c, t))
register_paradigm("prefix", lambda m, c, t, p: attach_prefix(m, c, t, per_head=p.prefix_per_head))
register_paradigm("adapter", lambda m, c, t, p: attach_adapter(m, c, t))
register_paradigm("lora", lambda m, c, t, p: attach_lora(m, c, t))

__all__ = ["Attachment", "FeatureTaps", "SpaceSpec", "attach", "paradigms", "register_paradigm"]
