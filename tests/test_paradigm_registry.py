"""A PET paradigm is one folder that registers itself (pegp_stream/core/pet/registry.py). Registering one, here a toy
paradigm defined in this test, makes it a valid `learner.pet.kind`, lists it in the configuration reference,
and puts it in the lists the conformance and projection-property tests are parametrized from, with no edit to
conftest.py; those tests' checks pass on it through its own declared test hooks."""

from __future__ import annotations

from typing import Literal

import pytest
import test_conformance as conformance
import test_projection_property as projection_property
import torch
import torch.nn.functional as F
from conftest import TINY_BACKBONE, digits_segment, tiny_config, trained_paradigms
from pydantic import Field
from torch import nn

from pegp_stream import ConfigError, create_learner, docs_config
from pegp_stream.config import LearnerConfig
from pegp_stream.core.pet import Attachment, Paradigm, PetConfig, SpaceSpec, paradigm, paradigms, register, unregister
from pegp_stream.schema import to_config


class ToyConfig(PetConfig):
    """Toy paradigm of this test: a bias-free linear residual beside one block's MLP."""

    kind: Literal["toy"] = "toy"
    block: int = Field(0, ge=0, description="the block whose MLP gets the residual")


class LinearResidual(nn.Module):
    """`base_layer(x) + W x`, W starting at zero; its protected space is the MLP's input x."""

    def __init__(self, base_layer: nn.Module, dim: int, taps, space: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.weight = nn.Parameter(torch.zeros(dim, dim))
        self.taps, self.space = taps, space

    def forward(self, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
        self.taps.record(self.space, x)
        return self.base_layer(x, **kwargs) + F.linear(x, self.weight.to(x.dtype))


def attach_toy(model, config: ToyConfig, taps, projection) -> Attachment:
    block, space = model.blocks[config.block], f"toy.blocks.{config.block}.mlp"
    residual = LinearResidual(block.mlp, model.embed_dim, taps, space)
    attachment = Attachment(modules=nn.ModuleDict({"residual": residual}),
                            spaces=[SpaceSpec(space, model.embed_dim, [residual.weight])])
    attachment.wrap(block, "mlp", residual)
    return attachment


def gather_toy(model, attachment: Attachment, hook) -> None:
    for spec in attachment.spaces:  # the MLP's input is the output of the frozen norm2 before it
        hook(model.blocks[int(spec.name.split(".")[2])].norm2, spec.name, lambda out: out)


TOY = Paradigm("toy", ToyConfig, attach_toy, tiny_options={"block": 1}, gather_features=gather_toy)


@pytest.fixture
def toy():
    register(TOY)
    try:
        yield TOY
    finally:
        unregister("toy")


def test_a_registered_paradigm_is_a_config_kind(toy):
    assert isinstance(to_config(LearnerConfig, {"pet": {"kind": "toy", "block": 1}}).pet, ToyConfig)
    with pytest.raises(ConfigError, match="valid PET kinds: adapter, lora, none, prefix, prompt, toy"):
        to_config(LearnerConfig, {"pet": "bitfit"})
    with pytest.raises(ConfigError) as caught:
        to_config(LearnerConfig, {"pet": {"kind": "toy", "blok": 1}})
    assert caught.value.field == "pet.blok"


def test_the_valid_kinds_are_the_registry():
    assert "toy" not in paradigms()
    with pytest.raises(ConfigError) as caught:
        to_config(LearnerConfig, {"pet": "toy"})
    assert caught.value.field == "pet"
    assert str(caught.value).endswith(f"valid PET kinds: {', '.join(paradigms())}")


def test_a_registered_paradigm_is_in_the_configuration_reference(toy):
    reference = docs_config.render()
    assert "##### `learner.pet` with `kind: toy`" in reference
    assert "| `learner.pet.block` | int, >= 0 | `0` | the block whose MLP gets the residual |" in reference


def test_the_tests_discover_a_registered_paradigm(toy):
    assert "toy" in trained_paradigms() and tiny_config("toy")["pet"] == {"kind": "toy", "block": 1}
    conformance.test_state_round_trip_continues_bitwise("toy", {"name": "sgd", "lr": 0.05})
    projection_property.test_applied_update_annihilates_old_features("toy", {"name": "sgd", "lr": 0.05}, "fp32")
    learner = create_learner(tiny_config("toy"))
    assert list(learner.pet_parameters) == ["residual.weight"]


def test_registration_checks_the_paradigm():
    with pytest.raises(ValueError, match="kind = 'other'"):
        register(Paradigm("other", ToyConfig, attach_toy, gather_features=gather_toy))
    with pytest.raises(ValueError, match="must declare gather_features"):
        register(Paradigm("toy", ToyConfig, attach_toy))
    register(TOY)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register(TOY)
    finally:
        unregister("toy")
    assert "toy" not in paradigms()


@pytest.mark.parametrize("pet", [
    {"kind": "prompt", "length": 3, "blocks": [0, 1]}, {"kind": "prompt", "length": 3, "blocks": [1]},
    {"kind": "prefix", "length": 2, "blocks": [1]}, {"kind": "adapter", "placement": "attn", "rank": 4},
    {"kind": "adapter", "rank": 4, "activation": "gelu"}, {"kind": "lora", "targets": ["qkv", "proj", "fc1", "fc2"]},
], ids=lambda pet: "-".join(str(v) for v in pet.values()))
def test_gather_hooks_rebuild_the_features_the_layers_record(pet):
    """The projection-property test trusts each paradigm's gather_features on the tiny options; here the hooks
    meet the features the paradigm's own modules record, on options the tiny configs do not reach."""
    learner = create_learner({"backbone": TINY_BACKBONE, "pet": pet, "precision": "fp32"})
    gathered: dict[str, torch.Tensor] = {}

    def hook(module, space, feature_of):
        module.register_forward_hook(lambda _m, _i, out: gathered.__setitem__(space, feature_of(out.detach())))

    paradigm(pet["kind"]).gather_features(learner.backbone, learner.attachment, hook)
    with torch.no_grad(), learner.taps.recording() as recorded:
        learner.backbone(digits_segment((0, 1), 4)[0])
    assert set(gathered) == set(recorded) == {spec.name for spec in learner.attachment.spaces}
    for name, features in recorded.items():
        torch.testing.assert_close(gathered[name].reshape(features.shape), features, rtol=0, atol=1e-6, msg=name)
