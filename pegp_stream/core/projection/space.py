"""A protected feature space: its segment covariance, its basis, and the projection of its tensors."""

from __future__ import annotations

from typing import Any

import torch

from pegp_stream.config import ProjectionConfig
from pegp_stream.core.projection.basis import append_orthonormal, grow_basis
from pegp_stream.core.projection.project import project_out
from pegp_stream.core.projection.spec import SpaceSpec


class ProtectedSpace:
    """Segment covariance (float64) and orthonormal basis (float64 master, float32 copy for the hot
    path) of one feature space, grouped as `spec.groups` independent bases of width dim / groups."""

    def __init__(self, spec: SpaceSpec, config: ProjectionConfig, device: torch.device) -> None:
        if spec.dim % spec.groups:
            raise ValueError(f"{spec.name}: dim {spec.dim} does not split into {spec.groups} groups")
        self.spec = spec
        self.eps = config.eps_bottleneck if spec.bottleneck else config.eps
        self.config = config
        self.group_dim = spec.dim // spec.groups
        g, m = spec.groups, self.group_dim
        self.covariance = torch.zeros(g, m, m, dtype=torch.float64, device=device)
        self.rows = 0
        self.ranks = [0] * g
        self.basis = torch.zeros(g, m, 0, dtype=torch.float64, device=device)
        self._basis32 = self.basis.float()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rank(self) -> int:
        return sum(self.ranks)

    @property
    def capacity(self) -> int:
        return self.spec.dim

    def accumulate(self, features: torch.Tensor) -> None:
        """Add rows of `features` (..., dim) to the segment covariance: C += F^T F per group.

        The product is formed in float32 (one batch) and summed in float64 (across the segment)."""
        rows = features.reshape(-1, self.spec.groups, self.group_dim).float().transpose(0, 1)
        self.covariance += torch.bmm(rows.transpose(1, 2), rows).double()
        self.rows += rows.shape[1]

    def consolidate(self, seed: int) -> int:
        """Grow every group's basis from the segment covariance, then reset the covariance."""
        covariance = self.covariance.cpu()
        grown = []
        for g in range(self.spec.groups):
            basis = self.basis[g, :, : self.ranks[g]].cpu()
            basis = grow_basis(
                covariance[g], basis, self.eps, self.config.svd, self.config.oversample,
                self.config.power_iters, seed=seed + g,
            )
            grown.append(basis)
        if self.spec.required_rows is not None:
            rows = self.spec.required_rows().detach().double().cpu().reshape(-1, self.group_dim)
            grown = [append_orthonormal(grown[0], rows.T)] if self.spec.groups == 1 else grown
        self._set_basis(grown)
        self.covariance.zero_()
        self.rows = 0
        return self.rank

    def _set_basis(self, bases: list[torch.Tensor]) -> None:
        self.ranks = [b.shape[1] for b in bases]
        width = max(self.ranks)
        padded = torch.zeros(self.spec.groups, self.group_dim, width, dtype=torch.float64)
        for g, b in enumerate(bases):
            padded[g, :, : b.shape[1]] = b
        self.basis = padded.to(self.covariance.device)
        self._basis32 = self.basis.float()

    def project(self, update: torch.Tensor) -> torch.Tensor:
        """The update with its component in span(basis) removed (identity while the basis is empty)."""
        if not self.rank:
            return update
        if update.dtype == torch.float64:
            return project_out(update, self.basis)
        return project_out(update.float(), self._basis32).to(update.dtype)

    def project_params_grad_(self) -> None:
        for param in self.spec.params:
            if param.grad is not None:
                param.grad.copy_(self.project(param.grad))

    def state_dict(self) -> dict[str, Any]:
        return {"covariance": self.covariance.clone(), "basis": self.basis.clone(),
                "ranks": torch.tensor(self.ranks, dtype=torch.int64), "rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["covariance"].shape) != tuple(self.covariance.shape):
            raise ValueError(f"{self.name}: covariance shape {tuple(state['covariance'].shape)} does not fit")
        self.covariance.copy_(state["covariance"])
        self.rows = int(state["rows"])
        ranks = [int(r) for r in state["ranks"]]
        basis = state["basis"].to(torch.float64)
        self._set_basis([basis[g, :, :r] for g, r in enumerate(ranks)])
