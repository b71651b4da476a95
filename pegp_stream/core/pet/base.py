"""What every PET paradigm shares: feature taps, the attachment (trained tensors and the protected spaces
declared for them), and in-place wrapping of the frozen timm model that can be undone (`Attachment.detach`
gives the original modules back)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

from pegp_stream.core.projection.spec import SpaceSpec


class FeatureTaps:
    """Where PET modules leave the features their protected spaces are built from.

    Recording is off by default, so inference and snapshot forwards cost nothing; the learner switches it
    on around its training forward (`with taps.recording() as features:`), so the covariance comes from the
    same forward that trains (no second pass). Features are kept detached, as the module computed them.
    """

    def __init__(self) -> None:
        self._active = False
        self._features: dict[str, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return self._active

    def record(self, space: str, features: torch.Tensor) -> None:
        if self._active:
            self._features[space] = features.detach()

    @contextmanager
    def recording(self) -> Iterator[dict[str, torch.Tensor]]:
        self._features = {}
        self._active = True
        try:
            yield self._features
        finally:
            self._active = False


@dataclass
class Attachment:
    """The result of attaching a paradigm to a model: its trainable modules and protected spaces."""

    modules: nn.ModuleDict
    spaces: list[SpaceSpec]
    on_consolidate: list[Callable[[int], None]] = field(default_factory=list)
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def wrap(self, parent: nn.Module, attr: str, wrapper: nn.Module) -> None:
        """Put `wrapper` in place of `parent.<attr>`; `detach` puts the original back."""
        original = getattr(parent, attr)
        setattr(parent, attr, wrapper)
        self._undo.append(lambda: setattr(parent, attr, original))

    def pet_parameters(self) -> dict[str, nn.Parameter]:
        """The PET tensors by name: every parameter of `modules` that is not part of a wrapped frozen
        `base_layer`. These (and the head) are what the learner trains and saves."""
        return {
            name: param
            for name, param in self.modules.named_parameters()
            if "base_layer" not in name.split(".")
        }

    def detach(self) -> None:
        while self._undo:
            self._undo.pop()()


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def submodule(parent: nn.Module, path: str, kind: type[ModuleT]) -> ModuleT:
    """`parent.get_submodule(path)` (e.g. "blocks.3.attn.qkv"), which must be a `kind`; TypeError naming both
    otherwise. torch types a module's attributes as Tensor | Module; this names the class the caller relies on."""
    module = parent.get_submodule(path)
    if not isinstance(module, kind):
        raise TypeError(f"{path} is a {type(module).__name__}, expected {kind.__name__}")
    return module


def block_indices(blocks: tuple[int, ...] | None, depth: int, field_name: str) -> list[int]:
    """Validate chosen block indices against the model depth (None means every block)."""
    from pegp_stream.errors import ConfigError

    if blocks is None:
        return list(range(depth))
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad:
        raise ConfigError(field_name, f"block indices {bad} outside 0..{depth - 1}")
    if len(set(blocks)) != len(blocks):
        raise ConfigError(field_name, "block indices must not repeat")
    return sorted(blocks)


def check_rank(rank: int, dim: int, field_name: str) -> None:
    from pegp_stream.errors import ConfigError

    if rank > dim:
        raise ConfigError(field_name, f"rank {rank} is larger than the feature dimension {dim}")


def tokens_flat(x: torch.Tensor) -> torch.Tensor:
    """(B, N, m) or (B, m) features -> (B, N, m) so every space stores per-sample token rows."""
    return x if x.dim() == 3 else x.unsqueeze(1)
