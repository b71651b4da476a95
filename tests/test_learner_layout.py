"""A learned state only loads into a learner of the same layout (issue 9, item 19): another backbone, its
weights, PET or head is refused before anything changes, naming the config fields that differ."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import TINY_BACKBONE, digits_segment, tiny_config

from pegp_stream import StateMismatchError, create_learner
from pegp_stream.checkpoint import decode_state, encode_state
from pegp_stream.config import BackboneConfig
from pegp_stream.core.backbone import build_backbone
from pegp_stream.core.pretrain import save_backbone


def trained_state(config: dict) -> dict:
    """A learner's state after two steps and a boundary, through the checkpoint encoding (JSON round trip)."""
    learner = create_learner(config)
    images, labels = digits_segment((0, 1), 16)
    learner.learn_many(images[:8], labels[:8])
    learner.consolidate()
    learner.learn_many(images[8:], labels[8:])
    return decode_state(encode_state({"learner": learner.state_dict()}))["learner"]


def snapshot(learner) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in learner.state_dict()["pet"].items()} | {
        "classes": list(learner.classes), "updates": learner.updates}


def assert_unchanged(before: dict, learner) -> None:
    after = snapshot(learner)
    assert before.keys() == after.keys()
    assert all(torch.equal(v, after[k]) if isinstance(v, torch.Tensor) else v == after[k] for k, v in before.items())


@pytest.mark.parametrize(("change", "field", "old", "new"), [
    ({"pet": {"rank": 4}}, "learner.pet.rank", 8, 4),
    ({"seed": 1}, "learner.seed", 0, 1),  # it drew the random backbone (whose digest differs too)
    ({"head": {"kind": "ncm"}}, "learner.head.kind", "linear", "ncm"),
    ({"backbone": {"depth": 3}}, "learner.backbone.depth", 2, 3),
    ({"optimizer": {"name": "adam"}}, "learner.optimizer.name", "sgd", "adam"),
])
def test_a_state_of_another_layout_is_refused_naming_the_field_before_anything_changes(change, field, old, new):
    state = trained_state(tiny_config("adapter"))
    learner = create_learner(tiny_config("adapter", **change))
    before = snapshot(learner)
    with pytest.raises(StateMismatchError) as caught:
        learner.load_state_dict(state)
    assert caught.value.differences[field] == (old, new)
    assert f"{field}: checkpoint has {old!r}, config has {new!r}" in str(caught.value)
    assert_unchanged(before, learner)


def test_another_paradigm_is_named_by_its_kind_alone():
    with pytest.raises(StateMismatchError) as caught:
        create_learner(tiny_config("lora")).load_state_dict(trained_state(tiny_config("adapter")))
    assert list(caught.value.differences) == ["learner.pet.kind"]


def test_other_backbone_weights_are_refused_even_under_the_same_config_keys(tmp_path):
    """Two weight files of the same architecture at the same path, the same config: the digest tells them
    apart."""
    path = tmp_path / "vit.safetensors"
    for seed in (1, 2):
        torch.manual_seed(seed)
        save_backbone(build_backbone(BackboneConfig(**TINY_BACKBONE)), path)
        config = tiny_config("adapter", backbone={"checkpoint_path": str(path)})
        if seed == 1:
            state = trained_state(config)
    learner = create_learner(config)
    with pytest.raises(StateMismatchError) as caught:
        learner.load_state_dict(state)
    assert list(caught.value.differences) == ["learner.backbone weights (sha256 prefix)"]


def test_learning_settings_may_change_and_the_same_layout_continues_bitwise():
    state = trained_state(tiny_config("adapter"))
    learner = create_learner(tiny_config("adapter", optimizer={"lr": 0.05}, projection={"eps": 0.9}))
    learner.load_state_dict(state)
    assert learner.updates == 2 and learner.classes == [0, 1]


def test_an_older_state_without_a_layout_record_loads_with_a_warning(caplog):
    state = trained_state(tiny_config("adapter"))
    del state["layout"]
    learner = create_learner(tiny_config("adapter"))
    with caplog.at_level(logging.WARNING, logger="pegp_stream.core.learner"):
        learner.load_state_dict(state)
    assert learner.updates == 2 and "not verified" in caplog.text
    with pytest.raises(StateMismatchError, match="learner.pet.rank: checkpoint has 8, config has 4"):
        create_learner(tiny_config("adapter", pet={"rank": 4})).load_state_dict(state)  # its config still counts
