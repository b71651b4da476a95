"""The registry of PET paradigms: each paradigm's folder ends with `register(Paradigm(...))`, naming its `kind`,
its config class, its attach function and its test hooks. The learner attaches by kind, the config validates
`learner.pet` against the registered config classes, the configuration reference lists them and the tests
discover the paradigms here (no list of paradigms anywhere else).

This module imports no paradigm and not config.py (config.py reads the registry), so a paradigm's folder can
import it and config.py can import the paradigms without a circle."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pegp_stream.core.pet.base import Attachment, FeatureTaps
from pegp_stream.errors import ConfigError
from pegp_stream.schema import Frozen


class PetConfig(Frozen):
    """Base of every PET paradigm's config; `kind` selects the paradigm."""

    kind: str


class ProjectionOptions(Protocol):
    """What a paradigm may read of the learner's `projection` section (config.ProjectionConfig)."""

    @property
    def prefix_per_head(self) -> bool: ...


Attach = Callable[[VisionTransformer, Any, FeatureTaps, ProjectionOptions], Attachment]
FeatureOf = Callable[[torch.Tensor], torch.Tensor]
Hook = Callable[[nn.Module, str, FeatureOf], None]
GatherFeatures = Callable[[VisionTransformer, Attachment, Hook], None]


@dataclass(frozen=True)
class Paradigm:
    """A PET paradigm as the package and its tests see it.

    `attach(model, config, taps, projection)` wraps the frozen `model` in place and returns the Attachment.
    Test hooks: `tiny_options`, the paradigm's options (besides `kind`) for the tiny ViT the tests use; and
    `gather_features(model, attachment, hook)`, which calls `hook(module, space, feature_of)` for each protected
    space of `attachment`: a forward hook on `module`, a module of the frozen model (not a PET module, and not
    through the taps), whose output `feature_of` turns into that space's features, as docs/method.md section 2
    defines them (tests/test_projection_property.py checks the bases against these). A paradigm that trains no
    tensor (`trains=False`, the frozen reference) needs neither."""

    kind: str
    config: type[PetConfig]
    attach: Attach
    tiny_options: Mapping[str, Any] = field(default_factory=dict)
    gather_features: GatherFeatures | None = None
    trains: bool = True


_PARADIGMS: dict[str, Paradigm] = {}
_CONFIGS: dict[str, type[PetConfig]] = {}
PET_CONFIGS: Mapping[str, type[PetConfig]] = MappingProxyType(_CONFIGS)
"""kind -> config class of every registered paradigm, in registration order (a live, read-only view)."""


def register(paradigm: Paradigm) -> Paradigm:
    """Add `paradigm` to the registry; its config class must declare `kind` as that kind's literal default."""
    kind = paradigm.kind
    if kind in _PARADIGMS:
        raise ValueError(f"PET paradigm {kind!r} is already registered")
    if not issubclass(paradigm.config, PetConfig) or paradigm.config.model_fields["kind"].default != kind:
        raise ValueError(f"PET paradigm {kind!r}: its config must subclass PetConfig with kind = {kind!r}")
    if paradigm.trains and paradigm.gather_features is None:
        raise ValueError(f"PET paradigm {kind!r} trains tensors, so it must declare gather_features")
    _PARADIGMS[kind] = paradigm
    _CONFIGS[kind] = paradigm.config
    return paradigm


def unregister(kind: str) -> None:
    """Remove a registered paradigm (tests that register a paradigm of their own undo it with this)."""
    del _PARADIGMS[kind], _CONFIGS[kind]


def paradigms() -> list[str]:
    """The registered kinds, sorted."""
    return sorted(_PARADIGMS)


def paradigm(kind: str) -> Paradigm:
    """The paradigm registered as `kind`; ConfigError naming `pet.kind` and the valid kinds otherwise."""
    if kind not in _PARADIGMS:
        raise ConfigError("pet.kind", f"unknown PET kind {kind!r}; valid PET kinds: {', '.join(paradigms())}")
    return _PARADIGMS[kind]


def attach(
    model: VisionTransformer, config: PetConfig, taps: FeatureTaps, projection: ProjectionOptions
) -> Attachment:
    """Attach the paradigm `config.kind` to `model` in place (undo with `Attachment.detach`)."""
    return paradigm(config.kind).attach(model, config, taps, projection)
