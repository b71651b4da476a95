"""Pixels to model input: uint8 images (H, W), (H, W, 1) or (H, W, 3) to a normalised float batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def to_model_input(
    images: np.ndarray | Sequence[np.ndarray],
    input_size: tuple[int, int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Stack uint8 images into (B, C, H, W) float32: grey to RGB, bilinear resize to `input_size`
    (C, H, W), scale to [0, 1], then normalise per channel with `mean`/`std`. Images may differ in size."""
    channels, height, width = input_size
    batch = [_one(image, channels, height, width) for image in images]
    stacked = torch.stack(batch) if batch else torch.zeros(0, channels, height, width)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (stacked - mean_t) / std_t


def _one(image: np.ndarray, channels: int, height: int, width: int) -> torch.Tensor:
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"image shape {array.shape} is not (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    tensor = torch.from_numpy(np.ascontiguousarray(array[:, :, :3])).permute(2, 0, 1).float() / 255.0
    if tensor.shape[0] != channels:
        tensor = tensor.expand(channels, -1, -1) if tensor.shape[0] == 1 else tensor[:channels]
    if tensor.shape[1:] != (height, width):
        tensor = F.interpolate(tensor[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return tensor
