"""Shared fixtures: a tiny ViT config and real images (scikit-learn's bundled digits, no download)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]

TINY_BACKBONE = {
    "name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4,
    "embed_dim": 64, "depth": 2, "num_heads": 4,
}


def tiny_pet(kind: str) -> dict:
    """The `learner.pet` section the tests use for `kind`: the options its registration declares for a tiny ViT."""
    from pegp_stream.core.pet import paradigm

    return {"kind": kind, **paradigm(kind).tiny_options}


def trained_paradigms() -> list[str]:
    """Every registered PET paradigm that trains tensors (not "none", the frozen-backbone reference)."""
    from pegp_stream.core.pet import paradigm, paradigms

    return [kind for kind in paradigms() if paradigm(kind).trains]


def head_kinds() -> list[str]:
    """Every `head.kind` the config accepts (the conformance checks run on each)."""
    import typing

    from pegp_stream.config import HeadConfig

    return list(typing.get_args(HeadConfig.model_fields["kind"].annotation))


def tiny_config(kind: str, **overrides: object) -> dict:
    config = {"backbone": dict(TINY_BACKBONE), "pet": tiny_pet(kind), "precision": "fp32", "seed": 0,
              "head": {"kind": "linear"}}  # the linear head has the protected space these tests look at
    for key, value in overrides.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    return config


@cache
def _digits() -> tuple[torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    return images, digits.target.astype(np.int64)


def digits_segment(classes: tuple[int, ...], count: int, offset: int = 0) -> tuple[torch.Tensor, list[int]]:
    """`count` digits images (3 x 32 x 32, normalised) of the given classes, in a fixed order."""
    images, labels = _digits()
    rows = np.flatnonzero(np.isin(labels, classes))[offset : offset + count]
    return images[rows].clone(), labels[rows].tolist()


@pytest.fixture
def broker():
    """A real embedded broker (Tansu) on a free port, for one test."""
    from pegp_stream.kafka.broker import EmbeddedBroker, free_port

    with EmbeddedBroker(port=free_port()) as embedded:
        yield embedded


@pytest.fixture(scope="session")
def digits_backbone(tmp_path_factory) -> str:
    """A tiny ViT pretrained on the digits train split (about 15 s on 2 cores, ~93% test accuracy), so
    tests about learning quality see useful features; a random ViT's pooled features barely vary."""
    from pegp_stream.config import BackboneConfig
    from pegp_stream.core.prepare import to_model_input
    from pegp_stream.core.pretrain import pretrain, save_backbone
    from pegp_stream.data.datasets import load_dataset

    train = load_dataset("digits", split="train")
    images = to_model_input(train.images, (3, 32, 32), (0.5,) * 3, (0.5,) * 3)
    labels = torch.as_tensor(train.labels, dtype=torch.int64)
    model, _ = pretrain(BackboneConfig(**TINY_BACKBONE), images, labels, epochs=15, batch_size=64, lr=3e-3,
                        augment=False)
    return str(save_backbone(model, tmp_path_factory.mktemp("backbones") / "vit_tiny_digits.safetensors"))
