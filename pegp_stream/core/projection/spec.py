"""The declaration of a protected feature space: what a PET paradigm tells the projection (docs/method.md
section 2). It lives beside the projection, which knows no paradigm: a paradigm builds `SpaceSpec`s, the
learner turns each into a `ProtectedSpace`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class SpaceSpec:
    """A protected feature space a paradigm declares (docs/method.md section 2).

    `params` are the trained tensors whose update must annihilate the space's old features; each has the
    feature axis last. `dim` is the feature width; with `groups` > 1 the width splits into equal groups
    with a basis each (prefix keys per attention head). `bottleneck` spaces are r-dimensional and use the
    lower energy threshold. `required_rows`, if given, returns rows always added to the basis at a
    consolidation (the prompt tokens themselves).
    """

    name: str
    dim: int
    params: list[torch.Tensor]  # nn.Parameters (torch types nn.Linear.weight as a plain Tensor)
    groups: int = 1
    bottleneck: bool = False
    required_rows: Callable[[], torch.Tensor] | None = None
