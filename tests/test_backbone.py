"""Real timm models and backbone weight loading from files the test writes itself."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import TINY_BACKBONE, digits_segment, tiny_pet, trained_paradigms
from safetensors.torch import save_file

from pegp_stream import CheckpointError, create_learner
from pegp_stream.config import BackboneConfig
from pegp_stream.core.backbone import build_backbone


@pytest.mark.parametrize("kind", trained_paradigms())
@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_real_timm_model_learns_and_predicts(name, kind):
    learner = create_learner({"backbone": {"name": name}, "pet": tiny_pet(kind), "precision": "fp32"})
    assert learner.input_size == (3, 224, 224)
    images = torch.randn(2, 3, 224, 224)
    out = learner.learn_many(images, ["cat", "dog"])
    assert out.predictions == [None, None] and torch.isfinite(torch.tensor(out.loss))
    prediction = learner.predict_many(images)
    assert prediction.classes == ["cat", "dog"] and prediction.probs.shape == (2, 2)
    assert all(label in ("cat", "dog") for label in prediction.labels)
    ranks = learner.consolidate()
    assert ranks and all(r > 0 for r in ranks.values())


def _source_model(**overrides):
    torch.manual_seed(5)
    kwargs = {k: v for k, v in TINY_BACKBONE.items() if k != "name"}
    return timm.create_model(TINY_BACKBONE["name"], num_classes=10, **{**kwargs, **overrides})


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "nested-pth"])
def test_checkpoint_the_test_wrote_loads_as_backbone(tmp_path, fmt):
    source = _source_model()
    state = {k: v.contiguous() for k, v in source.state_dict().items()}  # head included: it is ignored
    path = tmp_path / f"backbone.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state} if fmt == "nested-pth" else state, path)
    loaded = build_backbone(BackboneConfig(**TINY_BACKBONE, checkpoint_path=str(path)))
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    images, _ = digits_segment((0, 1), 4)
    source.eval()
    with torch.no_grad():
        expected = source.forward_head(source.forward_features(images), pre_logits=True)
        torch.testing.assert_close(loaded(images), expected)
    learner = create_learner({"backbone": {**TINY_BACKBONE, "checkpoint_path": str(path)}, "pet": tiny_pet("lora")})
    assert torch.equal(learner.backbone.cls_token, state["cls_token"])


def test_position_embedding_is_resampled_for_another_image_size(tmp_path):
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in _source_model().state_dict().items()}, str(path))
    loaded = build_backbone(BackboneConfig(**{**TINY_BACKBONE, "img_size": 48}, checkpoint_path=str(path)))
    assert loaded.pos_embed.shape[1] == 1 + (48 // 4) ** 2


def test_foreign_or_corrupt_checkpoints_are_reported(tmp_path):
    wrong = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in _source_model(embed_dim=96).state_dict().items()}, str(wrong))
    with pytest.raises(CheckpointError, match="wide.safetensors"):
        build_backbone(BackboneConfig(**TINY_BACKBONE, checkpoint_path=str(wrong)))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        build_backbone(BackboneConfig(**TINY_BACKBONE, checkpoint_path=str(corrupt)))
    with pytest.raises(CheckpointError, match="no such file"):
        build_backbone(BackboneConfig(**TINY_BACKBONE, checkpoint_path=str(tmp_path / "absent.pth")))


def test_backbone_is_frozen():
    model = build_backbone(BackboneConfig(**TINY_BACKBONE))
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
