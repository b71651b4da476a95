"""Optimizers and the projection of the update they apply (docs/method.md section 1).

SGD (with momentum reset at each consolidation and no weight decay) applies the projected gradient
linearly, so projecting the gradient is enough. Adam's per-coordinate scaling and any weight decay leave
the subspace, so for them the parameter delta the optimizer produced is projected as well.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from pegp_stream.config import LearnerConfig
from pegp_stream.core.projection.space import ProtectedSpace


def build_optimizer(
    config: LearnerConfig, pet_params: list[torch.nn.Parameter], head_params: list[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    opt = config.optimizer
    groups = [{"params": pet_params, "lr": opt.lr}]
    if head_params:
        groups.append({"params": head_params, "lr": opt.lr * config.head.lr_scale})
    if opt.name == "adam":
        return torch.optim.Adam(groups, lr=opt.lr, betas=opt.betas, eps=opt.adam_eps, weight_decay=opt.weight_decay)
    return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)


class GradientOnly:
    """The optimizer is linear in the (already projected) gradient: nothing to do around the step."""

    @contextlib.contextmanager
    def around_step(self) -> Iterator[None]:
        yield


class ProjectAppliedUpdate:
    """Remembers the protected tensors before the step and projects the delta the optimizer applied:
    W = W_old + P(W_new - W_old)."""

    def __init__(self, spaces: list[ProtectedSpace]) -> None:
        self.pairs = [(space, param) for space in spaces for param in space.spec.params]

    @contextlib.contextmanager
    def around_step(self) -> Iterator[None]:
        before = [param.detach().clone() for _, param in self.pairs]
        yield
        with torch.no_grad():
            for (space, param), old in zip(self.pairs, before, strict=True):
                param.copy_(old + space.project(param - old))


def build_update_projection(config: LearnerConfig, spaces: list[ProtectedSpace]) -> GradientOnly | ProjectAppliedUpdate:
    nonlinear = config.optimizer.name != "sgd" or config.optimizer.weight_decay > 0
    return ProjectAppliedUpdate(spaces) if spaces and nonlinear else GradientOnly()
