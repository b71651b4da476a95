"""Growing an orthonormal feature basis from a segment covariance (GPM rule on sigma^2 energy).

See docs/method.md section 3. All math here is float64 and runs at consolidation time only.
"""

from __future__ import annotations

from typing import Literal

import torch

SvdMethod = Literal["randomized", "exact"]


def residual_covariance(covariance: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(I - M M^T) C (I - M M^T), symmetrised."""
    if basis.shape[1] == 0:
        return covariance
    complement = torch.eye(covariance.shape[0], dtype=covariance.dtype) - basis @ basis.T
    residual = complement @ covariance @ complement
    return (residual + residual.T) / 2


def top_eigenpairs(
    matrix: torch.Tensor, count: int, method: SvdMethod, oversample: int = 10, power_iters: int = 2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` largest eigenpairs of a symmetric PSD matrix, eigenvalues descending.

    `randomized` uses torch.svd_lowrank (Halko et al.) with `oversample` extra columns and `power_iters`
    power iterations, seeded without touching the global RNG; it falls back to the exact solver when the
    request covers most of the spectrum or the randomized result is not finite.
    """
    m = matrix.shape[0]
    count = min(count, m)
    if method == "randomized" and 2 * (count + oversample) < m:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vectors, values, _ = torch.svd_lowrank(matrix, q=count + oversample, niter=power_iters)
        if torch.isfinite(values).all() and torch.isfinite(vectors).all():
            return values[:count], vectors[:, :count]
    values, vectors = torch.linalg.eigh(matrix)
    return values.flip(0)[:count].clamp_min(0), vectors.flip(1)[:, :count]


def grow_basis(
    covariance: torch.Tensor,
    basis: torch.Tensor,
    eps: float,
    method: SvdMethod = "randomized",
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
) -> torch.Tensor:
    """Extend the orthonormal `basis` (m x k) until it explains at least `eps` of the energy
    (trace) of `covariance` (m x m); the component that crosses `eps` is always included.

    Returns the new basis (m x k') with k <= k' <= m; the first k columns are `basis` unchanged.
    """
    m, k = basis.shape
    total = float(torch.trace(covariance))
    if total <= 0.0 or k >= m:
        return basis
    residual = residual_covariance(covariance, basis)
    explained = (total - float(torch.trace(residual))) / total
    if explained >= eps:
        return basis
    if method == "exact":  # one full eigendecomposition, counted over the whole spectrum
        values, vectors = top_eigenpairs(residual, m - k, "exact")
        chosen = _crossing_count(values, explained, eps, total)
    else:  # widen the randomized request until the crossing component is inside it
        request = min(m - k, 8)
        while True:
            values, vectors = top_eigenpairs(residual, request, method, oversample, power_iters, seed)
            chosen = _crossing_count(values, explained, eps, total)
            if chosen < request or request >= m - k:
                break
            request = min(m - k, 2 * request)
    return append_orthonormal(basis, vectors[:, :chosen])


def _crossing_count(values: torch.Tensor, explained: float, eps: float, total: float) -> int:
    """How many leading components to add: up to and including the one that reaches `eps`."""
    for i, value in enumerate(values.tolist()):
        if explained >= eps:
            return i
        explained += value / total
    return len(values)


def append_orthonormal(basis: torch.Tensor, candidates: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Append the part of `candidates`' columns outside span(basis), orthonormalised, dropping
    directions whose residual is below `tol` of the largest candidate norm; cap at m columns."""
    if candidates.shape[1] == 0:
        return basis
    residual = candidates - basis @ (basis.T @ candidates)
    residual = residual - basis @ (basis.T @ residual)  # second pass: Gram-Schmidt twice is enough
    u, s, _ = torch.linalg.svd(residual, full_matrices=False)
    scale = float(candidates.norm(dim=0).max())
    keep = int((s > tol * scale).sum())
    keep = min(keep, basis.shape[0] - basis.shape[1])
    return torch.cat([basis, u[:, :keep]], dim=1)


def subspace_agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    """||U_ref^T U_other||_F^2 / k: 1 when the two k-column orthonormal bases span the same space."""
    k = reference.shape[1]
    return float((reference.T @ other).norm() ** 2 / k) if k else 1.0
