"""Class-incremental classifier heads over the pooled backbone feature.

Both keep a fixed label capacity allocated up front, so parameter and optimizer-state shapes never change
as classes arrive; only the first `n_classes` rows are live (a row starts at zero and stays silent until
its class is seen).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    """Bias-free linear head; rows of unseen classes are zero. Bias-free because a bias moves every old
    logit and no feature space can protect it (docs/method.md section 5)."""

    def __init__(self, capacity: int, dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(capacity, dim, dtype=dtype))

    def forward(self, features: torch.Tensor, n_classes: int) -> torch.Tensor:
        return F.linear(features, self.weight[:n_classes].to(features.dtype))

    def observe(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """Linear heads learn through the optimizer only."""


class NearestClassMeanHead(nn.Module):
    """Logits are cosine similarities to running class means, divided by a temperature. The means are
    updated from the training forward's features; the PET tensors learn through these logits."""

    def __init__(self, capacity: int, dim: int, temperature: float) -> None:
        super().__init__()
        self.register_buffer("means", torch.zeros(capacity, dim))
        self.register_buffer("counts", torch.zeros(capacity, dtype=torch.int64))
        self.temperature = temperature

    def forward(self, features: torch.Tensor, n_classes: int) -> torch.Tensor:
        means = F.normalize(self.means[:n_classes], dim=-1)
        return F.normalize(features, dim=-1) @ means.T / self.temperature

    @torch.no_grad()
    def observe(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        features = features.float()
        for label in targets.unique().tolist():
            rows = features[targets == label]
            total = self.counts[label] + rows.shape[0]
            self.means[label] += (rows.sum(0) - rows.shape[0] * self.means[label]) / total
            self.counts[label] = total
