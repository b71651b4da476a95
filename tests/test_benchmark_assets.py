"""The backbones committed under benchmarks/assets: each is the file its sidecar describes (sha256), loads into
the ViT its sidecar names, and the assets README quotes the same checksum (what a user checks a rebuild by)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import timm

from pegp_stream.config import BackboneConfig
from pegp_stream.core.backbone import load_backbone_weights

ASSETS = Path(__file__).resolve().parents[1] / "benchmarks" / "assets"
WEIGHTS = sorted(ASSETS.glob("*.safetensors"))


@pytest.mark.parametrize("weights", WEIGHTS, ids=[p.stem for p in WEIGHTS])
def test_a_committed_backbone_matches_its_sidecar_and_loads(weights: Path) -> None:
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert sidecar["sha256"] == digest
    assert f"`{digest}`" in (ASSETS / "README.md").read_text()
    config = BackboneConfig(**sidecar["backbone"])
    model = timm.create_model(config.name, pretrained=False, num_classes=0, **config.timm_kwargs)
    load_backbone_weights(model, weights)  # raises on any missing or misshapen tensor


def test_both_stand_ins_are_committed() -> None:
    assert {p.name for p in WEIGHTS} >= {"vit-cifar10-w128d6.safetensors", "vit-distil-lite0-w128d6.safetensors"}
