"""Learner semantics: prequential predictions, the growing head, bad rows, boundaries, head variants."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import digits_segment, tiny_config

from pegp_stream import create_learner
from pegp_stream.errors import LabelCapacityError


def test_predictions_are_made_before_the_update_from_the_same_forward():
    learner = create_learner(tiny_config("adapter"))
    x0, y0 = digits_segment((0, 1), 16)
    first = learner.learn_many(x0, [f"digit-{y}" for y in y0])
    assert first.predictions == [None] * 16  # nothing known before the first batch
    x1, y1 = digits_segment((0, 1), 16, offset=16)
    expected = learner.predict_many(x1).labels
    out = learner.learn_many(x1, [f"digit-{y}" for y in y1])
    assert out.predictions == expected
    assert learner.predict_many(x1).labels != expected or learner.updates == 2


def test_head_grows_in_order_of_arrival_and_new_labels_are_not_predicted_early():
    learner = create_learner(tiny_config("prompt"))
    x, y = digits_segment((3, 7), 8)
    learner.learn_many(x, [7] * 8)
    out = learner.learn_many(x, [3, 3, 7, 7, "ship", "ship", 3, 7])
    assert learner.classes == [7, 3, "ship"]
    assert set(out.predictions) <= {7}  # only classes known before the batch can be predicted
    prediction = learner.predict_many(x)
    assert prediction.probs.shape == (8, 3) and prediction.classes == [7, 3, "ship"]
    torch.testing.assert_close(prediction.probs.sum(1), torch.ones(8))


@pytest.mark.parametrize("kind", ["prompt", "prefix", "adapter", "lora"])
def test_prequential_accuracy_is_well_above_chance_on_digits(kind, digits_backbone):
    learner = create_learner(tiny_config(kind, backbone={"checkpoint_path": digits_backbone}))
    x, y = digits_segment((0, 1, 2), 360)
    correct = []
    for i in range(0, 360, 12):
        out = learner.learn_many(x[i : i + 12], y[i : i + 12])
        correct += [p == t for p, t in zip(out.predictions, y[i : i + 12], strict=True)]
    late = sum(correct[-120:]) / 120
    print(f"{kind}: prequential accuracy over the last 120 of 360 digits (3 classes): {late:.2f}")
    assert late > 0.8


def test_label_beyond_capacity_is_refused_before_any_change():
    learner = create_learner(tiny_config("adapter", head={"max_classes": 2}))
    x, _ = digits_segment((0, 1), 4)
    learner.learn_many(x, [0, 1, 0, 1])
    before = learner.state_dict()
    with pytest.raises(LabelCapacityError, match="max_classes=2"):
        learner.learn_many(x, [0, 1, 2, 1])
    assert learner.classes == [0, 1] and learner.updates == before["counters"]["updates"]


def test_rows_with_non_finite_pixels_or_loss_are_rejected_and_the_rest_learned():
    learner = create_learner(tiny_config("adapter"))
    x, y = digits_segment((0, 1), 8)
    x[2, 0, 5, 5] = float("nan")
    x[5] = 3e38  # finite, but overflows inside the network
    out = learner.learn_many(x, y)
    assert out.rejected == {2: "non-finite pixel values", 5: "non-finite loss"}
    assert out.predictions[2] is None and math.isfinite(out.loss)
    assert learner.samples_learned == 6
    assert all(torch.isfinite(p).all() for p in learner.pet_parameters.values())
    assert all(torch.isfinite(s.covariance).all() for s in learner.spaces)


def test_wrong_image_shape_is_a_clear_error():
    learner = create_learner(tiny_config("prompt"))
    with pytest.raises(ValueError, match=r"images must be a float tensor \(B, 3, 32, 32\); got \(2, 3, 28, 28\)"):
        learner.learn_many(torch.zeros(2, 3, 28, 28), [0, 1])
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        learner.learn_many(torch.zeros(2, 3, 32, 32), [0, 1, 2])


def test_consolidate_resets_momentum_and_segment_statistics():
    learner = create_learner(tiny_config("lora"))
    x, y = digits_segment((0, 1), 16)
    learner.learn_many(x, y)
    assert learner.optimizer.state and any(s.rows for s in learner.spaces)
    ranks = learner.consolidate()
    assert not learner.optimizer.state
    assert all(s.rows == 0 and not s.covariance.any() for s in learner.spaces)
    assert ranks == learner.ranks and all(0 < r <= s.capacity for s, r in zip(learner.spaces, ranks.values(),
                                                                               strict=True))


def test_consolidate_every_grows_the_bases_inside_a_segment_without_starting_one():
    learner = create_learner(tiny_config("lora", projection={"consolidate_every": 32}))
    x, y = digits_segment((0, 1), 48)
    learner.learn_many(x[:16], y[:16])
    assert learner.growths == 0 and learner.ranks == {s.name: 0 for s in learner.spaces}
    learner.learn_many(x[16:32], y[16:32])  # 32 samples since the start: the bases grow
    assert learner.growths == 1 and learner.grown_at == 32 and all(r > 0 for r in learner.ranks.values())
    assert learner.consolidations == 0 and learner.segment_classes == {0, 1}  # still the first segment
    assert not learner.optimizer.state and all(s.rows == 0 for s in learner.spaces)
    learner.learn_many(x[32:], y[32:])
    assert learner.growths == 1  # 16 since the last growth
    learner.consolidate()  # a boundary grows them too and restarts the count
    assert (learner.growths, learner.consolidations, learner.grown_at) == (2, 1, 48)


def test_consolidate_every_keeps_features_learned_early_in_a_segment_where_they_were():
    """The head's statistics of a long segment's first samples stay valid while the rest of it is learned:
    their features barely move once a growth has protected them, and they do move without it."""
    x, y = digits_segment((0, 1, 2), 96)

    def moved(every: int) -> float:
        learner = create_learner(tiny_config("lora", optimizer={"lr": 10.0}, head={"kind": "slda"},
                                             projection={"consolidate_every": every}))
        learner.learn_many(x[:32], y[:32])
        before = learner.features(x[:32])
        for i in range(32, 96, 16):
            learner.learn_many(x[i : i + 16], y[i : i + 16])
        return float((learner.features(x[:32]) - before).norm() / before.norm())

    protected, free = moved(32), moved(0)
    assert free > 5e-3 and protected < 0.1 * free


def test_projection_disabled_has_no_spaces_and_consolidate_reports_none():
    learner = create_learner(tiny_config("adapter", projection={"enabled": False}))
    x, y = digits_segment((0, 1), 8)
    learner.learn_many(x, y)
    assert learner.spaces == [] and learner.consolidate() == {}


def test_segment_train_mask_leaves_old_class_rows_untouched():
    learner = create_learner(tiny_config("adapter", head={"train_mask": "segment"},
                                         projection={"protect_head": False}))
    x, y = digits_segment((0, 1), 16)
    learner.learn_many(x, y)
    learner.consolidate()
    old_rows = learner.head.weight[:2].detach().clone()
    x, y = digits_segment((2, 3), 16)
    learner.learn_many(x, y)
    assert torch.equal(learner.head.weight[:2], old_rows)
    assert learner.head.weight[2:4].abs().sum() > 0


def test_nearest_class_mean_head_learns(digits_backbone):
    config = tiny_config("adapter", head={"kind": "ncm"}, backbone={"checkpoint_path": digits_backbone})
    learner = create_learner(config)
    assert all(space.name != "head" for space in learner.spaces)
    x, y = digits_segment((0, 1), 96)
    for i in range(0, 96, 12):
        learner.learn_many(x[i : i + 12], y[i : i + 12])
    test_x, test_y = digits_segment((0, 1), 40, offset=96)
    accuracy = sum(p == t for p, t in zip(learner.predict_many(test_x).labels, test_y, strict=True)) / 40
    assert accuracy > 0.9


def test_frozen_value_prefixes_stay_frozen_across_a_reload():
    config = tiny_config("prefix", pet={"freeze_values_after_consolidation": True})
    learner = create_learner(config)
    x, y = digits_segment((0, 1), 16)
    learner.learn_many(x, y)
    learner.consolidate()
    values = {n: p.detach().clone() for n, p in learner.pet_parameters.items() if n.startswith("value_prefixes")}
    reloaded = create_learner(config)
    reloaded.load_state_dict(learner.state_dict())
    x, y = digits_segment((2, 3), 16)
    for model in (learner, reloaded):
        model.learn_many(x, y)
        for name, value in values.items():
            assert torch.equal(model.pet_parameters[name], value)


def test_bf16_autocast_keeps_state_in_full_precision():
    learner = create_learner(tiny_config("lora", precision="bf16"))
    assert learner.autocast_dtype == torch.bfloat16
    x, y = digits_segment((0, 1), 8)
    learner.learn_many(x, y)
    assert all(p.dtype == torch.float64 for p in learner.pet_parameters.values())
    assert all(s.covariance.dtype == torch.float64 for s in learner.spaces)


# lr_unit "feature": one optimizer.lr means the same step in feature space in every paradigm


def _feature_gradient_norm(learner, x: torch.Tensor, y: list[int]) -> float:
    """|dL/dF|: the gradient on the pooled features of the loss `learner` would take its next step on."""
    step = learner._forward(x, learner._targets(y), len(learner.classes))
    step.loss.backward()
    return step.pooled.grad.norm().item()


@pytest.mark.parametrize("kind", ["prompt", "prefix", "adapter", "lora"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_first_step_moves_the_features_as_far_as_sgd_on_the_features_would(kind, optimizer):
    """The contract of lr_unit "feature": the first step moves the batch's pooled features by lr * |dL/dF|
    (to first order), whatever the paradigm's raw sensitivity (a prefix's is ~10^4 x a prompt's)."""
    lr = 0.1  # small enough for first order, large enough that fp32 rounding of the forward's weights is far below
    config = tiny_config(kind, head={"kind": "slda"}, optimizer={"name": optimizer, "lr": lr})
    learner, twin = create_learner(config), create_learner(config)
    x, y = digits_segment((0, 1), 32)
    for model in (learner, twin):  # the first batch gives no gradient (no class means to read yet)
        model.learn_many(x[:16], y[:16])
    assert learner.lr_factor is None
    expected = lr * _feature_gradient_norm(twin, x[16:], y[16:])
    before = learner.features(x[16:])
    learner.learn_many(x[16:], y[16:])
    moved = (learner.features(x[16:]) - before).norm().item()
    assert learner.lr_factor is not None and learner.optimizer.param_groups[0]["lr"] == lr * learner.lr_factor
    assert moved == pytest.approx(expected, rel=0.15)


def test_the_lr_factor_is_measured_again_in_each_segment_and_kept_in_the_state():
    learner = create_learner(tiny_config("prefix"))
    x, y = digits_segment((0, 1), 32)
    learner.learn_many(x[:16], y[:16])
    learner.learn_many(x[16:], y[16:])
    first = learner.lr_factor
    learner.consolidate()
    assert learner.lr_factor is None  # until the new segment's first gradient
    x2, y2 = digits_segment((2, 3), 16)
    learner.learn_many(x2, y2)
    assert learner.lr_factor not in (None, first)
    resumed = create_learner(tiny_config("prefix"))
    resumed.load_state_dict(learner.state_dict())
    assert resumed.lr_factor == learner.lr_factor


def test_a_resumed_learner_steps_at_the_configured_rates_not_the_saved_ones():
    """Learning rates may change between runs: after a resume the optimizer uses the config's, not the
    rates its saved state carries (torch's load_state_dict restores those)."""
    learner = create_learner(tiny_config("adapter", optimizer={"lr": 0.01}))
    x, y = digits_segment((0, 1), 32)
    learner.learn_many(x[:16], y[:16])
    learner.learn_many(x[16:], y[16:])  # the first step has no gradient (a zero head): the second calibrates
    resumed = create_learner(tiny_config("adapter", optimizer={"lr": 0.02}))
    resumed.load_state_dict(learner.state_dict())
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx(
        [0.02 * learner.lr_factor, 0.02 * resumed.config.head.lr_scale])


def test_lr_unit_parameter_applies_the_rate_to_the_raw_tensors():
    learner = create_learner(tiny_config("prompt", optimizer={"lr": 0.05, "lr_unit": "parameter"}))
    x, y = digits_segment((0, 1), 16)
    learner.learn_many(x, y)
    assert learner.lr_factor == 1.0 and learner.optimizer.param_groups[0]["lr"] == 0.05
    assert learner.state_dict()["lr_factor"] is None


def test_refit_head_replaces_statistics_gathered_while_the_features_moved():
    """The joint reference's last pass: the head's statistics become those of the given samples at the final
    features (what a fresh head fed the same features holds), not a mix over epochs of moving features."""
    from pegp_stream.core.heads import build_head

    learner = create_learner(tiny_config("adapter", head={"kind": "slda"}))
    x, y = digits_segment((0, 1, 2), 48)
    for _ in range(2):  # two epochs: the head has seen every sample twice, at features that moved between
        for i in range(0, 48, 16):
            learner.learn_many(x[i : i + 16], y[i : i + 16])
    assert learner.head.counts.sum().item() == 96
    learner.refit_head([(x[:24], y[:24]), (x[24:], y[24:])])
    fresh = build_head(learner.config.head, learner.backbone.num_features, seed=0, linear_dtype=torch.float64)
    fresh.observe(learner.features(x), torch.tensor([learner.classes.index(label) for label in y]))
    assert learner.head.counts.sum().item() == 48
    torch.testing.assert_close(learner.head(learner.features(x), 3), fresh(learner.features(x), 3))
