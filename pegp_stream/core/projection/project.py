"""The one implementation of the PEGP projection: remove old-feature directions from an update."""

from __future__ import annotations

import torch


def project_out(update: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Return `update - (update @ M) @ M.T` per feature group, feature axis last.

    `basis` is (groups, m, k) with orthonormal columns per group (all-zero padding columns are allowed
    and change nothing); `update`'s last axis has width groups * m. Cost O(numel(update) * k): the m x m
    projector is never formed.
    """
    groups, m, _ = basis.shape
    lead = update.shape[:-1]
    grouped = update.reshape(-1, groups, m).transpose(0, 1)  # (groups, n, m)
    coefficients = torch.bmm(grouped, basis)  # (groups, n, k)
    projected = grouped - torch.bmm(coefficients, basis.transpose(1, 2))
    return projected.transpose(0, 1).reshape(*lead, groups * m)


def leakage(update: torch.Tensor, basis: torch.Tensor) -> float:
    """||update M|| / ||update||: how much of an update lies in span(M) (0 for a projected update)."""
    groups, m, _ = basis.shape
    grouped = update.detach().to(basis.dtype).reshape(-1, groups, m).transpose(0, 1)
    norm = grouped.norm()
    return float(torch.bmm(grouped, basis).norm() / norm) if norm > 0 else 0.0
