"""The embedded default: a small pretrained backbone and a real stream, with no setup beyond the venv.

No pretrained ViT can be downloaded on offline machines, so the demo pretrains a tiny ViT on
scikit-learn's bundled digits once (about 15 s on 2 cores) and caches it; the stream it then learns is
a different, real data set: Split-MNIST when local files or torchvision's download provide it, else digits.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch

from pegp_stream.config import BackboneConfig
from pegp_stream.core.prepare import to_model_input
from pegp_stream.core.pretrain import pretrain, save_backbone
from pegp_stream.data.datasets import default_cache_dir, load_dataset

logger = logging.getLogger(__name__)

DEMO_BACKBONE: dict[str, Any] = {
    "name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 4,
}
DEMO_PRETRAIN: dict[str, Any] = {"epochs": 15, "batch_size": 64, "lr": 3e-3, "augment": False, "seed": 0}


def demo_backbone(cache_dir: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Path of the demo backbone, pretraining it on digits first if it is not cached yet."""
    key = hashlib.sha256(json.dumps([DEMO_BACKBONE, DEMO_PRETRAIN], sort_keys=True).encode()).hexdigest()[:16]
    path = (cache_dir or default_cache_dir()) / "backbones" / f"vit-tiny-digits-{key}.safetensors"
    if path.is_file():
        return path
    if log:
        log(f"pretraining the demo backbone on digits (cached at {path})")
    train = load_dataset("digits", split="train")
    images = to_model_input(train.images, (3, 32, 32), (0.5,) * 3, (0.5,) * 3)
    labels = torch.as_tensor(train.labels, dtype=torch.int64)
    model, report = pretrain(BackboneConfig(**DEMO_BACKBONE), images, labels, log=log, **DEMO_PRETRAIN)
    if log:
        log(f"demo backbone ready: {report.steps} steps in {report.seconds:.0f} s")
    return save_backbone(model, path)


@cache  # the first answer holds for the process: an offline machine tries the download once
def demo_stream_datasets() -> tuple[str, ...]:
    """("mnist",) when MNIST can be had (local files or a download, see `load_dataset`), else ("digits",)."""
    try:
        load_dataset("mnist", split="test")
    except Exception as error:  # any failure to find, fetch or read MNIST falls back to the bundled digits
        logger.warning("the demo streams scikit-learn's digits: %s", error)
        return ("digits",)
    return ("mnist",)
