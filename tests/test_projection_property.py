"""The PEGP property per paradigm and per protected space, on the update the optimizer applied.

The test gathers segment A's features itself, with forward hooks at the places docs/method.md section 2
names (not through the learner's own taps), so a basis built from the wrong tensor fails (a).
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from conftest import digits_segment, tiny_config, trained_paradigms

from pegp_stream import create_learner
from pegp_stream.core.pet import paradigm
from pegp_stream.core.projection.basis import grow_basis
from pegp_stream.core.projection.project import leakage

EPS = 0.97
STEPS_A, STEPS_B, BATCH = 8, 50, 8


class FeatureGatherer:
    """Forward hooks that rebuild each protected space's features from the frozen model's own modules: the pooled
    feature for the head, and for the PET spaces where the paradigm's registered test hook says (its
    `gather_features`, written from docs/method.md section 2, independent of the learner's taps)."""

    def __init__(self, learner):
        self.covariance: dict[str, torch.Tensor] = defaultdict(lambda: 0)
        self.handles = []
        self._hook(learner.backbone.fc_norm, "head", lambda out: out)
        paradigm(learner.config.pet.kind).gather_features(learner.backbone, learner.attachment, self._hook)

    def _hook(self, module, space: str, feature_of) -> None:
        def hook(_module, _inputs, output):
            if torch.is_grad_enabled():  # training forwards only
                with torch.no_grad():
                    features = feature_of(output.detach())
                rows = features.double().reshape(-1, features.shape[-1])
                self.covariance[space] = self.covariance[space] + rows.T @ rows
        self.handles.append(module.register_forward_hook(hook))

    def remove(self):
        for handle in self.handles:
            handle.remove()


def explained_energy(covariance: torch.Tensor, basis: torch.Tensor) -> float:
    """Fraction of trace(C) inside the (grouped, block-diagonal) basis."""
    groups, m, _ = basis.shape
    inside = total = 0.0
    for g in range(groups):
        block = covariance[g * m : (g + 1) * m, g * m : (g + 1) * m]
        inside += float(torch.trace(basis[g].T @ block @ basis[g]))
        total += float(torch.trace(block))
    return inside / total


def learn_two_segments(kind: str, optimizer: dict, precision: str, enabled: bool):
    config = tiny_config(kind, optimizer=optimizer, precision=precision,
                         projection={"enabled": enabled, "eps": EPS, "eps_bottleneck": EPS})
    learner = create_learner(config)
    gatherer = FeatureGatherer(learner)
    xa, ya = digits_segment((0, 1, 2, 3, 4), STEPS_A * BATCH)
    for i in range(0, len(ya), BATCH):
        learner.learn_many(xa[i : i + BATCH], ya[i : i + BATCH])
    gatherer.remove()
    required_rows = {spec.name: spec.required_rows().clone() for spec in learner.attachment.spaces
                     if spec.required_rows is not None}
    learner.consolidate()
    before = {id(p): p.detach().clone() for p in learner.optimizer.param_groups[0]["params"]}
    before[id(learner.head.weight)] = learner.head.weight.detach().clone()
    xb, yb = digits_segment((5, 6, 7, 8, 9), STEPS_B * BATCH)
    for i in range(0, len(yb), BATCH):
        learner.learn_many(xb[i : i + BATCH], yb[i : i + BATCH])
    return learner, gatherer.covariance, before, required_rows


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.05}, {"name": "adam", "lr": 0.005}],
                         ids=["sgd", "adam"])
@pytest.mark.parametrize("kind", trained_paradigms())
def test_applied_update_annihilates_old_features(kind, optimizer, precision):
    learner, covariance, before, required_rows = learn_two_segments(kind, optimizer, precision, enabled=True)
    assert set(covariance) == {space.name for space in learner.spaces}, "test hooks must cover every space"
    for space in learner.spaces:
        # (a) the basis explains at least eps of A's energy, measured on features the test gathered itself
        assert explained_energy(covariance[space.name], space.basis) >= EPS - 1e-6, space.name
        # (b) the change the optimizer applied has no component in span(M)
        for param in space.spec.params:
            delta = param.detach() - before[id(param)]
            assert delta.norm() > 0, f"{space.name}: tensor did not move"
            assert leakage(delta, space.basis) < 1e-5, space.name
    for space in learner.spaces:  # rows a space requires in its basis (prompt: P dP^T = 0 needs P's own rows)
        if space.name in required_rows:
            assert leakage(required_rows[space.name], space.basis) > 1 - 1e-9, space.name


@pytest.mark.parametrize("kind", trained_paradigms())
def test_without_projection_the_same_check_fails(kind):
    learner, covariance, before, _ = learn_two_segments(kind, {"name": "sgd", "lr": 0.05}, "fp32", enabled=False)
    assert learner.spaces == []
    specs = {spec.name: spec for spec in learner.attachment.spaces}
    worst = 0.0
    for name, spec in specs.items():
        groups = spec.groups
        m = spec.dim // groups
        bases = [grow_basis(covariance[name][g * m : (g + 1) * m, g * m : (g + 1) * m],
                            torch.zeros(m, 0, dtype=torch.float64), EPS, "exact") for g in range(groups)]
        width = max(b.shape[1] for b in bases)
        basis = torch.zeros(groups, m, width, dtype=torch.float64)
        for g, b in enumerate(bases):
            basis[g, :, : b.shape[1]] = b
        for param in spec.params:
            worst = max(worst, leakage(param.detach() - before[id(param)], basis))
    print(f"{kind}: largest leakage without projection {worst:.3f}")
    assert worst > 0.1


def old_feature_drift(covariance: torch.Tensor, delta: torch.Tensor, groups: int) -> tuple[float, float]:
    """(drift, bound) for one trained tensor: drift = sum over A's features x of |dW x|^2, the energy by which
    the protected layer's output on old inputs moved; bound = sum over groups of |dW_g|_2^2 (1 - eps) trace(C_g).
    With dW M = 0 and M explaining at least eps of trace(C): dW C dW^T = dW (I-MM^T) C (I-MM^T) dW^T, whose trace
    is at most |dW|_2^2 trace((I-MM^T) C) <= |dW|_2^2 (1 - eps) trace(C)."""
    m = delta.shape[-1] // groups
    drift = bound = 0.0
    for g in range(groups):
        d = delta[..., g * m : (g + 1) * m].reshape(-1, m).double()
        block = covariance[g * m : (g + 1) * m, g * m : (g + 1) * m]
        drift += float(torch.trace(d @ block @ d.T))
        bound += float(torch.linalg.matrix_norm(d, ord=2)) ** 2 * (1 - EPS) * float(torch.trace(block))
    return drift, bound


@pytest.mark.parametrize("kind", trained_paradigms())
def test_old_features_drift_stays_under_the_bound_eps_gives(kind):
    """What the head's stored statistics were computed through: every protected layer's output on segment A's
    inputs moves, while learning B, by at most the bound derived from eps (old_feature_drift); without projection
    the same update breaks that bound, so the check can fail."""
    for enabled in (True, False):
        learner, covariance, before, _ = learn_two_segments(kind, {"name": "sgd", "lr": 0.05}, "fp32", enabled)
        checked = []
        for spec in learner.attachment.spaces:
            groups = spec.groups if learner.config.projection.prefix_per_head else 1
            for param in spec.params:
                drift, bound = old_feature_drift(covariance[spec.name], param.detach() - before[id(param)], groups)
                checked.append((spec.name, drift, bound))
        if enabled:
            over = [(name, drift, bound) for name, drift, bound in checked if drift > bound * (1 + 1e-6) + 1e-12]
            assert not over, f"{kind}: drift above the eps bound in {over}"
        else:
            assert any(drift > 2 * bound for _, drift, bound in checked), f"{kind}: the bound would hold anyway"
