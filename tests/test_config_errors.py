"""A bad config fails at construction with a message naming the field."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from pegp_stream import ConfigError, create_learner


@pytest.mark.parametrize(
    ("override", "field", "words"),
    [
        ({"pet": {"kind": "bitfit"}}, "pet", "valid PET kinds: adapter, lora, none, prefix, prompt"),
        ({"pet": "bitfit"}, "pet", "valid PET kinds: adapter, lora, none, prefix, prompt"),
        ({"pet": 3}, "pet", "must be a PET kind name or a mapping with a 'kind'"),
        ({"pet": {"kind": "adapter", "rank": 65}}, "pet.rank", "larger than the feature dimension 64"),
        ({"pet": {"kind": "lora", "rank": 100}}, "pet.rank", "larger than the feature dimension"),
        ({"pet": {"kind": "adapter", "rank": 0}}, "pet.rank", "greater than or equal to 1"),
        ({"pet": {"kind": "adapter", "blocks": [0, 7]}}, "pet.blocks", "outside 0..1"),
        ({"pet": {"kind": "lora", "targets": ["qkv", "q"]}}, "pet.targets", "either 'qkv' or slices"),
        ({"pet": {"kind": "prompt", "lenght": 3}}, "pet.lenght", "Extra inputs"),
        ({"projection": {"eps": 1.0}}, "projection.eps", "less than 1"),
        ({"projection": {"eps": 0.0}}, "projection.eps", "greater than 0"),
        ({"projection": {"eps_bottleneck": -0.5}}, "projection.eps_bottleneck", "greater than 0"),
        ({"backbone": {"img_size": 30}}, "backbone.img_size", "not a multiple of patch_size 4"),
        ({"backbone": {"name": "resnet18"}}, "backbone.name", "VisionTransformer is needed"),
        ({"backbone": {"name": "no_such_model"}}, "backbone.name", "Unknown model"),
        ({"optimizer": {"name": "lbfgs"}}, "optimizer.name", "'sgd' or 'adam'"),
        ({"precision": "fp8"}, "precision", "'auto', 'fp32' or 'bf16'"),
    ],
)
def test_bad_config_names_the_field(override, field, words):
    config = tiny_config("adapter")
    for key, value in override.items():
        merge = isinstance(value, dict) and key != "pet" and "name" not in value
        config[key] = {**config.get(key, {}), **value} if merge else value
    with pytest.raises(ConfigError) as caught:
        create_learner(config)
    assert caught.value.field == field
    assert words in str(caught.value)
    assert str(caught.value).startswith(f"{field}: ")


def test_defaults_fill_missing_keys():
    learner = create_learner({"backbone": tiny_config("prompt")["backbone"]})
    assert learner.config.pet.kind == "prompt"
    assert learner.config.projection.enabled and learner.config.projection.eps == 0.999
    assert learner.config.optimizer.name == "sgd"


def test_a_bare_pet_kind_takes_that_kinds_defaults():
    learner = create_learner({**tiny_config("adapter"), "pet": "lora"})
    assert learner.config.pet.kind == "lora" and learner.config.pet.rank == 4
