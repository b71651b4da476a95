"""Behaviour on a seeded two-segment stream of real digits: with projection, the PET part's pooled
features on segment A's inputs move far less while learning segment B than without projection.

The head is left unprotected in both runs, so the comparison isolates the PET projection, and eps is
close to 1 so A's features lie inside the kept span (docs/method.md section 6).
"""

from __future__ import annotations

import pytest
import torch
from conftest import digits_segment, tiny_config

from pegp_stream import create_learner

SEGMENT, BATCH = 400, 16
EPS = 0.999


def pooled_drift(kind: str, enabled: bool, **pet: object) -> float:
    """Relative change of the pooled features on A's inputs caused by learning B."""
    config = tiny_config(kind, projection={"enabled": enabled, "eps": EPS, "eps_bottleneck": EPS,
                                           "protect_head": False},
                         optimizer={"lr": 0.01, "lr_unit": "parameter"})  # a raw rate that moves every paradigm
    config["pet"].update(pet)
    learner = create_learner(config)
    xa, ya = digits_segment((0, 1, 2, 3, 4), SEGMENT)
    xb, yb = digits_segment((5, 6, 7, 8, 9), SEGMENT)
    for i in range(0, SEGMENT, BATCH):
        learner.learn_many(xa[i : i + BATCH], ya[i : i + BATCH])
    learner.consolidate()
    with torch.no_grad():
        before = learner._pooled(xa)
    for i in range(0, SEGMENT, BATCH):
        learner.learn_many(xb[i : i + BATCH], yb[i : i + BATCH])
    with torch.no_grad():
        after = learner._pooled(xa)
    return float((after - before).norm() / before.norm())


@pytest.mark.parametrize("kind", ["adapter", "lora"])
def test_exact_paradigms_keep_old_features_ten_times_better(kind):
    projected, plain = pooled_drift(kind, True), pooled_drift(kind, False)
    print(f"{kind}: drift projected {projected:.2e}, plain {plain:.2e}, ratio {plain / projected:.1f}")
    assert plain > 1e-3, "learning B must move A's features without projection, or the test proves nothing"
    assert projected * 10 <= plain


def test_prompt_projection_reduces_drift():
    projected, plain = pooled_drift("prompt", True), pooled_drift("prompt", False)
    print(f"prompt: drift projected {projected:.2e}, plain {plain:.2e}, ratio {plain / projected:.2f}")
    assert projected < plain


def test_prefix_drift_flows_through_value_prefixes():
    """Key prefixes keep old logits exactly; value prefixes are unprotected (docs/method.md section 2).
    With values frozen after the first consolidation, old outputs are kept; with values free, print how
    much drift the values carry."""
    plain = pooled_drift("prefix", False)
    frozen_values = pooled_drift("prefix", True, freeze_values_after_consolidation=True)
    free_values = pooled_drift("prefix", True)
    print(f"prefix: drift plain {plain:.2e}, projected with free values {free_values:.2e} "
          f"(ratio {plain / free_values:.2f}), with frozen values {frozen_values:.2e} "
          f"(ratio {plain / frozen_values:.1f})")
    assert frozen_values < plain
    assert frozen_values * 10 <= free_values
