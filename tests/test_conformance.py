"""Checks every registered PET paradigm passes automatically (docs/contributing.md, habit 2)."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import digits_segment, head_kinds, tiny_config, trained_paradigms

from pegp_stream import create_learner
from pegp_stream.config import BackboneConfig
from pegp_stream.core.backbone import build_backbone

PARADIGMS = trained_paradigms()
OPTIMIZERS = [{"name": "sgd", "lr": 0.05}, {"name": "adam", "lr": 0.01}]


def batches(count: int, classes: tuple[int, ...], size: int = 8, offset: int = 0):
    images, labels = digits_segment(classes, count * size, offset)
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, count * size, size)]


def run(learner, stream) -> list[float]:
    return [learner.learn_many(images, labels).loss for images, labels in stream]


def assert_state_equal(a, b, path="state"):
    """Bitwise equality of two nested learner states."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys {set(a) ^ set(b)}"
        for key in a:
            assert_state_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_state_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def through_bytes(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: o["name"])
@pytest.mark.parametrize("kind", PARADIGMS)
def test_state_round_trip_continues_bitwise(kind, optimizer):
    config = tiny_config(kind, optimizer=optimizer, projection={"max_tokens_per_sample": 20})
    first = batches(4, (0, 1, 2)) + batches(3, (3, 4))
    later = batches(3, (3, 4), offset=24) + [None] + batches(3, (5, 6))
    uninterrupted = create_learner(config)
    run(uninterrupted, first[:4])
    uninterrupted.consolidate()
    run(uninterrupted, first[4:])
    saved = through_bytes(uninterrupted.state_dict())
    resumed = create_learner(config)
    resumed.load_state_dict(saved)
    for learner in (uninterrupted, resumed):
        for step in later:
            learner.consolidate() if step is None else learner.learn_many(*step)
    assert_state_equal(uninterrupted.state_dict(), resumed.state_dict())


@pytest.mark.parametrize("kind", PARADIGMS)
def test_state_round_trip_continues_bitwise_with_growths_inside_segments(kind):
    """`projection.consolidate_every`: the count since the last growth is part of the state, so a resumed
    learner grows its bases at the same sample as one that never stopped."""
    config = tiny_config(kind, projection={"max_tokens_per_sample": 20, "consolidate_every": 20})
    uninterrupted = create_learner(config)
    run(uninterrupted, batches(7, (0, 1, 2)))  # growths at 24 and 48 samples; 8 since the last at the save
    saved = through_bytes(uninterrupted.state_dict())
    resumed = create_learner(config)
    resumed.load_state_dict(saved)
    for learner in (uninterrupted, resumed):
        run(learner, batches(3, (0, 1, 2), offset=56))
    assert uninterrupted.growths == 3 and uninterrupted.consolidations == 0
    assert_state_equal(uninterrupted.state_dict(), resumed.state_dict())


@pytest.mark.parametrize("head", head_kinds())
def test_every_head_round_trips_and_predicts_without_changing_state(head):
    config = tiny_config("adapter", head={"kind": head}, optimizer={"lr": 1e-3})
    later = batches(2, (2, 3), offset=16) + [None] + batches(2, (4, 5))
    uninterrupted = create_learner(config)
    run(uninterrupted, batches(2, (0, 1)) + batches(2, (2, 3)))
    before = uninterrupted.state_dict()
    images, _ = digits_segment((4, 5), 8)
    predicted = uninterrupted.predict_many(images)  # heads that solve lazily keep the solve out of the state
    assert_state_equal(before, uninterrupted.state_dict())
    resumed = create_learner(config)
    resumed.load_state_dict(through_bytes(before))
    assert torch.equal(resumed.predict_many(images).probs, predicted.probs)
    for learner in (uninterrupted, resumed):
        for step in later:
            learner.consolidate() if step is None else learner.learn_many(*step)
    assert_state_equal(uninterrupted.state_dict(), resumed.state_dict())


@pytest.mark.parametrize("kind", PARADIGMS)
def test_seeded_determinism(kind):
    stream = batches(3, (0, 1)) + batches(3, (2, 3))
    a, b = create_learner(tiny_config(kind)), create_learner(tiny_config(kind))
    assert run(a, stream[:3]) == run(b, stream[:3])
    a.consolidate(), b.consolidate()
    assert run(a, stream[3:]) == run(b, stream[3:])
    assert_state_equal(a.state_dict(), b.state_dict())
    other = create_learner(tiny_config(kind, seed=1))
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict()["pet"].values(),
                                                    other.state_dict()["pet"].values(), strict=True))


@pytest.mark.parametrize("kind", PARADIGMS)
def test_inputs_not_modified(kind):
    learner = create_learner(tiny_config(kind))
    images, labels = digits_segment((0, 1), 8)
    images_before, labels_before = images.clone(), list(labels)
    learner.learn_many(images, labels)
    learner.predict_many(images)
    assert torch.equal(images, images_before) and labels == labels_before


@pytest.mark.parametrize("kind", PARADIGMS)
def test_predict_does_not_change_state(kind):
    learner = create_learner(tiny_config(kind))
    run(learner, batches(2, (0, 1)))
    before = learner.state_dict()
    images, _ = digits_segment((2, 3), 8)
    first = learner.predict_many(images)
    second = learner.predict_many(images)
    assert_state_equal(before, learner.state_dict())
    assert torch.equal(first.probs, second.probs) and first.labels == second.labels


@pytest.mark.parametrize("kind", PARADIGMS)
def test_only_pet_tensors_and_head_change(kind):
    learner = create_learner(tiny_config(kind))
    trained = {id(p) for p in learner.pet_parameters.values()} | {id(p) for p in learner.head.parameters()}
    frozen = {name: p.detach().clone() for name, p in learner.backbone.named_parameters() if id(p) not in trained}
    assert frozen and all(not p.requires_grad for name, p in learner.backbone.named_parameters()
                          if id(p) not in trained)
    pet_before = {n: p.detach().clone() for n, p in learner.pet_parameters.items()}
    run(learner, batches(3, (0, 1)))
    learner.consolidate()
    run(learner, batches(3, (2, 3)))
    for name, p in learner.backbone.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"frozen backbone tensor {name} changed"
    changed = [n for n, p in learner.pet_parameters.items() if not torch.equal(p, pet_before[n])]
    assert changed, "no PET tensor was trained"
    saved = learner.state_dict()
    assert set(saved["pet"]) == set(learner.pet_parameters)
    assert not any("base_layer" in name for name in saved["pet"])


@pytest.mark.parametrize("kind", PARADIGMS)
def test_detach_gives_the_original_model_back(kind):
    config = tiny_config(kind)
    learner = create_learner(config)
    run(learner, batches(2, (0, 1)))
    learner.attachment.detach()
    torch.manual_seed(config["seed"])
    original = build_backbone(BackboneConfig(**config["backbone"]))
    assert [type(m) for m in learner.backbone.modules()] == [type(m) for m in original.modules()]
    images, _ = digits_segment((0, 1), 4)
    with torch.no_grad():
        assert torch.equal(learner.backbone(images), original(images))


@pytest.mark.parametrize("kind", PARADIGMS)
def test_a_training_forward_records_exactly_the_declared_spaces(kind):
    """A paradigm names each protected space twice: where its layers record features on the taps and where its
    attach declares the space (`SpaceSpec`). One recording forward must leave features under every declared name,
    under no other, each as wide as declared; else the learner would grow a basis from nothing."""
    learner = create_learner(tiny_config(kind))
    declared = {spec.name: spec.dim for spec in learner.attachment.spaces}
    images, _ = digits_segment((0, 1), 4)
    with torch.no_grad(), learner.taps.recording() as features:
        learner.backbone.forward_features(images)
    assert {name: f.shape[-1] for name, f in features.items()} == declared
