"""Supervised pretraining of a timm ViT, for machines that cannot download pretrained weights.

The result is a safetensors state dict of the timm model (head included) that `backbone.checkpoint_path`
loads. This is ordinary offline training, not part of the continual learner.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pegp_stream.config import BackboneConfig


@dataclass(frozen=True)
class PretrainReport:
    epochs: int
    steps: int
    seconds: float
    train_loss: float
    test_accuracy: float | None


def pretrain(
    config: BackboneConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    augment: bool = True,
    seed: int = 0,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[torch.nn.Module, PretrainReport]:
    """Train `config`'s model from scratch on normalised `images` (N, C, H, W) with int `labels`.

    AdamW with a linear warm-up then cosine decay; random crop (4 px padding) and horizontal flip
    when `augment`. Returns the model (eval mode) and a report with the test accuracy if `test` is given.
    """
    torch.manual_seed(seed)
    num_classes = int(labels.max()) + 1
    model = timm.create_model(config.name, pretrained=False, num_classes=num_classes, **config.timm_kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * math.ceil(len(labels) / batch_size)
    schedule = warmup_cosine(optimizer, total)
    generator = torch.Generator().manual_seed(seed)
    start, loss = time.perf_counter(), torch.tensor(math.nan)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for i in range(0, len(labels), batch_size):
            rows = order[i : i + batch_size]
            batch = _augment(images[rows], generator) if augment else images[rows]
            loss = F.cross_entropy(model(batch), labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if log:
            log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    accuracy = evaluate(model, *test) if test is not None else None
    return model, PretrainReport(epochs, total, time.perf_counter() - start, loss.item(), accuracy)


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A schedule over `total` steps: linear warm-up for the first 5%, then cosine decay to zero."""
    warmup = max(1, total // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    correct = 0
    for i in range(0, len(labels), batch_size):
        correct += int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
    return correct / len(labels)


def save_backbone(model: torch.nn.Module, path: str | Path) -> Path:
    """Write the model's state dict as safetensors (atomically: temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(partial))
    partial.replace(path)
    return path


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip, per image."""
    n, _, h, w = images.shape
    padded = F.pad(images, (4, 4, 4, 4), mode="reflect")
    dx = torch.randint(0, 9, (n,), generator=generator)
    dy = torch.randint(0, 9, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    return out
