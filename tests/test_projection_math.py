"""The projection and basis-growth math on its own (docs/method.md sections 1 and 3)."""

from __future__ import annotations

import pytest
import torch

from pegp_stream.core.projection.basis import (
    append_orthonormal,
    grow_basis,
    residual_covariance,
    subspace_agreement,
    top_eigenpairs,
)
from pegp_stream.core.projection.project import leakage, project_out


def decaying_features(n: int, d: int, seed: int, decay: float = 0.9) -> torch.Tensor:
    """Rows with a geometrically decaying spectrum in a random orthonormal frame."""
    g = torch.Generator().manual_seed(seed)
    frame, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    scales = decay ** torch.arange(d, dtype=torch.float64)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scales) @ frame.T


def test_project_out_removes_span_and_keeps_complement():
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(32, 5, generator=g, dtype=torch.float64))
    update = torch.randn(7, 32, generator=g, dtype=torch.float64)
    projected = project_out(update, basis[None])
    assert (projected @ basis).abs().max() < 1e-12
    inside = (update @ basis) @ basis.T
    torch.testing.assert_close(projected, update - inside)
    torch.testing.assert_close(project_out(projected, basis[None]), projected)  # idempotent


def test_grouped_projection_acts_per_group():
    g = torch.Generator().manual_seed(1)
    groups, m = 4, 8
    bases = [torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))[0] for k in (1, 3, 0, 2)]
    padded = torch.zeros(groups, m, 3, dtype=torch.float64)
    for i, b in enumerate(bases):
        padded[i, :, : b.shape[1]] = b
    update = torch.randn(5, groups * m, generator=g, dtype=torch.float64)
    projected = project_out(update, padded)
    for i, b in enumerate(bases):
        piece = update[:, i * m : (i + 1) * m]
        expected = piece - piece @ b @ b.T
        torch.testing.assert_close(projected[:, i * m : (i + 1) * m], expected)
    assert leakage(projected, padded) < 1e-12
    assert leakage(update, padded) > 0.1


def test_grow_basis_reaches_eps_and_includes_crossing_component():
    features = decaying_features(2000, 48, seed=2)
    covariance = features.T @ features
    empty = torch.zeros(48, 0, dtype=torch.float64)
    basis = grow_basis(covariance, empty, eps=0.9, method="exact")
    eigenvalues = torch.linalg.eigvalsh(covariance).flip(0)
    energy = torch.cumsum(eigenvalues, 0) / eigenvalues.sum()
    expected_rank = int((energy < 0.9).sum()) + 1  # the crossing component is included
    assert basis.shape[1] == expected_rank
    torch.testing.assert_close(basis.T @ basis, torch.eye(expected_rank, dtype=torch.float64))
    explained = torch.trace(basis.T @ covariance @ basis) / torch.trace(covariance)
    assert explained >= 0.9


def test_grow_basis_extends_without_touching_old_columns_and_caps_at_dimension():
    first = decaying_features(500, 16, seed=3)
    basis = grow_basis(first.T @ first, torch.zeros(16, 0, dtype=torch.float64), eps=0.8, method="exact")
    second = decaying_features(500, 16, seed=4)
    grown = grow_basis(second.T @ second, basis, eps=0.8, method="exact")
    torch.testing.assert_close(grown[:, : basis.shape[1]], basis)
    torch.testing.assert_close(grown.T @ grown, torch.eye(grown.shape[1], dtype=torch.float64))
    full = grow_basis(second.T @ second, grown, eps=0.999999, method="exact")
    assert full.shape[1] <= 16
    again = grow_basis(second.T @ second, full, eps=0.5, method="exact")
    assert again.shape[1] == full.shape[1]  # already explained: nothing added


def test_residual_covariance_is_orthogonal_to_basis():
    features = decaying_features(300, 12, seed=5)
    basis, _ = torch.linalg.qr(torch.randn(12, 4, dtype=torch.float64))
    residual = residual_covariance(features.T @ features, basis)
    assert (residual @ basis).abs().max() < 1e-9


@pytest.mark.parametrize("d", [64, 192])
def test_randomized_matches_exact_principal_subspace(d):
    features = decaying_features(4 * d, d, seed=d, decay=0.93)
    covariance = features.T @ features
    empty = torch.zeros(d, 0, dtype=torch.float64)
    exact = grow_basis(covariance, empty, eps=0.95, method="exact")
    randomized = grow_basis(covariance, empty, eps=0.95, method="randomized", seed=7)
    assert randomized.shape[1] == exact.shape[1]
    agreement = subspace_agreement(exact, randomized)
    print(f"d={d} k={exact.shape[1]} agreement={agreement:.6f}")
    assert agreement >= 0.99


def test_randomized_eigenpairs_are_seeded_and_leave_global_rng_alone():
    features = decaying_features(400, 64, seed=9)
    covariance = features.T @ features
    state = torch.get_rng_state()
    a = top_eigenpairs(covariance, 5, "randomized", seed=3)
    b = top_eigenpairs(covariance, 5, "randomized", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_append_orthonormal_skips_directions_already_in_span():
    basis, _ = torch.linalg.qr(torch.randn(10, 3, dtype=torch.float64))
    candidates = torch.cat([basis[:, :2] * 3.0, torch.randn(10, 1, dtype=torch.float64)], dim=1)
    grown = append_orthonormal(basis, candidates)
    assert grown.shape[1] == 4
    torch.testing.assert_close(grown.T @ grown, torch.eye(4, dtype=torch.float64))
