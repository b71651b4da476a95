"""Class-incremental classifier heads over the pooled backbone feature.

Every head keeps a fixed label capacity allocated up front, so parameter, buffer and optimizer-state shapes
never change as classes arrive; only the first `n_classes` rows are live (a row starts at zero and stays
silent, logit 0, until its class is seen). `build_head` makes the head `HeadConfig.kind` names.

- `linear`: trained by the optimizer (and protected like any PET tensor).
- `ncm`: cosine similarity to running class means.
- `slda` and `ridge`: second-order heads whose weights are a closed-form function of statistics accumulated
  exactly in one pass (float64 buffers, so they are part of the checkpoint). The result does not depend on the
  order of the samples (up to float64 rounding), and the weights are solved lazily: the first forward after
  `observe` changed the statistics solves once; later forwards reuse it. The solved weights are constants for
  the PET's gradient; the forward stays differentiable in the features.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, Self, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from pegp_stream.config import HeadConfig

STATS_DTYPE = torch.float64  # sums of many float32 outer products: float32 would lose the small eigenvalues
# ridge: the GCV grid, relative to the mean eigenvalue of the Gram matrix (a scale-free choice: multiplying
# the features by a constant changes neither the chosen model nor its predictions).
RIDGE_GRID = tuple(10.0 ** (k / 2) for k in range(-12, 7))  # 1e-6 .. 1e3, half-decade steps
# ridge: seeds the random projection from the learner seed without reusing the streams it seeds elsewhere.
PROJECTION_SEED_OFFSET = 0x5EED


def build_head(config: HeadConfig, dim: int, seed: int, linear_dtype: torch.dtype) -> Head:
    """The head `config.kind` names for `dim`-wide pooled features; `seed` is the learner's seed."""
    capacity = config.max_classes
    if config.kind == "ncm":
        return NearestClassMeanHead(capacity, dim, config.ncm_temperature)
    if config.kind == "slda":
        return StreamingLDAHead(capacity, dim, config.slda_shrinkage)
    if config.kind == "ridge":
        return RidgeHead(capacity, dim, config.ridge_random_features, seed + PROJECTION_SEED_OFFSET)
    return LinearHead(capacity, dim, dtype=linear_dtype)


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

    means: torch.Tensor  # buffers, declared for the type checker (nn.Module.__getattr__ returns Tensor | Module)
    counts: torch.Tensor

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

    @torch.no_grad()
    def compensate(self, features: torch.Tensor, shift: torch.Tensor) -> None:
        """Move the class means by `shift`, the change of `features` under the last step (`drift_shift`)."""
        self.means += drift_shift(self.means, self.counts, features, shift).to(self.means.dtype)


class _SolvedHead(nn.Module):
    """A head whose logits are `expand(features) @ weight.T + bias`, with (weight, bias) a closed-form
    function of buffers: solved by `_solve` on first use and cached until the buffers change (`observe`
    calls `_invalidate`; loading a state dict and moving between devices invalidate too). The cache is one
    tuple, replaced by one assignment, so concurrent readers of a copy see an old or a new solution, never
    a mix. Subclasses keep a `counts` buffer (samples per class) and implement `_solve(live)` for the first
    `live` rows."""

    counts: torch.Tensor  # a buffer every subclass registers

    def __init__(self) -> None:
        super().__init__()
        self._solved: tuple[torch.Tensor, torch.Tensor] | None = None
        # torch leaves this method unannotated; untyped_calls_exclude does not reach a call through self
        self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]
            lambda module, _keys: module._invalidate()
        )

    def forward(self, features: torch.Tensor, n_classes: int) -> torch.Tensor:
        weight, bias = self.solution()
        hidden = self.expand(features)
        return hidden @ _rows(weight, n_classes).T.to(hidden.dtype) + _rows(bias, n_classes).to(hidden.dtype)

    def expand(self, features: torch.Tensor) -> torch.Tensor:
        """The representation the statistics are kept in (identity unless a subclass maps it)."""
        return features

    @torch.no_grad()
    def solution(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (live, width), bias (live,)) in float64 for the classes up to the last one seen."""
        if self._solved is None:
            seen = self.counts.nonzero()
            self._solved = self._solve(int(seen.max()) + 1 if len(seen) else 0)
        return self._solved

    def _solve(self, live: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _invalidate(self) -> None:
        self._solved = None

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any) -> Self:
        # .to(device) / .double(): the cache would stay behind
        self._invalidate()
        applied: Self = super()._apply(fn, *args, **kwargs)  # type: ignore[no-untyped-call]  # torch: unannotated
        return applied


class StreamingLDAHead(_SolvedHead):
    """Streaming linear discriminant analysis (Hayes & Kanan 2020, "Lifelong machine learning with deep
    streaming linear discriminant analysis"): running class means mu_k and one covariance shared by all
    classes, Sigma = within-class scatter / N, kept exactly (Chan et al.'s pairwise merge of each batch's
    per-class mean and scatter, float64). Logits are x W^T + b with W = mu Lambda, b = -0.5 diag(mu W^T),
    Lambda = ((1 - s) Sigma + s I)^-1 and s = `shrinkage` (avalanche-lib's StreamingLDA uses this form and
    the same default 1e-4). Class priors are ignored, as in the paper.

    avalanche's per-sample recursion is not exact: it weights each sample's scatter by the global count
    and scores a class's first sample against a zero mean; the difference vanishes as N grows."""

    means: torch.Tensor  # buffers
    scatter: torch.Tensor

    def __init__(self, capacity: int, dim: int, shrinkage: float) -> None:
        super().__init__()
        self.register_buffer("means", torch.zeros(capacity, dim, dtype=STATS_DTYPE))
        self.register_buffer("counts", torch.zeros(capacity, dtype=torch.int64))
        self.register_buffer("scatter", torch.zeros(dim, dim, dtype=STATS_DTYPE))
        self.shrinkage = shrinkage

    @torch.no_grad()
    def observe(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        features = features.to(STATS_DTYPE)
        present = targets.unique()  # sorted
        added = torch.bincount(targets, minlength=len(self.counts))[present]
        batch_means = torch.zeros_like(self.means).index_add_(0, targets, features)[present]
        batch_means /= added[:, None].to(STATS_DTYPE)
        centred = features - batch_means[torch.searchsorted(present, targets)]
        before, total = self.counts[present].to(STATS_DTYPE), (self.counts[present] + added).to(STATS_DTYPE)
        shift = batch_means - self.means[present]
        merge = before * added / total  # n_a n_b / (n_a + n_b): the scatter between the two means
        self.scatter += centred.T @ centred + (shift * merge[:, None]).T @ shift
        self.means[present] += shift * (added / total)[:, None]
        self.counts[present] += added
        self._invalidate()

    @torch.no_grad()
    def compensate(self, features: torch.Tensor, shift: torch.Tensor) -> None:
        """Move the class means by `shift`, the change of `features` under the last step (`drift_shift`); the
        shared covariance is within-class, so a translation of each class leaves it as it is."""
        self.means += drift_shift(self.means, self.counts, features, shift).to(self.means.dtype)
        self._invalidate()

    def _solve(self, live: int) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.scatter.shape[0]
        covariance = self.scatter / max(int(self.counts.sum()), 1)
        eye = torch.eye(dim, dtype=STATS_DTYPE, device=covariance.device)
        factor = torch.linalg.cholesky((1 - self.shrinkage) * covariance + self.shrinkage * eye)
        means = self.means[:live]
        weight = torch.cholesky_solve(means.T, factor).T
        return weight, -0.5 * (means * weight).sum(1)


class RidgeHead(_SolvedHead):
    """Ridge regression onto one-hot targets, RanPAC-style (McDonnell et al., NeurIPS 2023): an optional
    fixed random projection h = ReLU(x P), P (d, M) with N(0, 1) entries (`random_features` = M; 0 keeps
    h = x), then the Gram matrix G = sum h h^T and class sums C_k = sum over class k of h, in float64.
    Weights W = C (G + lambda I)^-1, no bias, as in RanPAC.

    lambda is chosen from the stream at every solve, by generalised cross-validation (Golub, Heath & Wahba
    1979) on the accumulated statistics: with G = V diag(e) V^T and q_i = ||(C V)_{:, i}||^2,
        RSS(lambda) = N - sum_i q_i (e_i + 2 lambda) / (e_i + lambda)^2,   df(lambda) = sum_i e_i / (e_i + lambda),
        GCV(lambda) = N RSS / (N - df)^2,
    minimised over RIDGE_GRID times mean(e). Exact leave-one-out would need each sample's leverage, which the
    sufficient statistics do not keep; GCV replaces every leverage by their mean df / N and needs only G, C and
    N (RanPAC instead holds out 20% of the first task, which a stream has no room for). Grid points where
    N - df < 1 are skipped (too few samples to judge them); with none left the largest lambda is used.

    P is drawn from a private generator seeded with `seed` and kept as a buffer, so it is in the checkpoint
    and a resumed learner uses the very matrix it learned with."""

    projection: torch.Tensor | None  # buffers
    gram: torch.Tensor
    class_sums: torch.Tensor

    def __init__(self, capacity: int, dim: int, random_features: int, seed: int) -> None:
        super().__init__()
        width = random_features or dim
        projection = None
        if random_features:
            generator = torch.Generator().manual_seed(seed)
            projection = torch.randn(dim, random_features, generator=generator)
        self.register_buffer("projection", projection)
        self.register_buffer("gram", torch.zeros(width, width, dtype=STATS_DTYPE))
        self.register_buffer("class_sums", torch.zeros(capacity, width, dtype=STATS_DTYPE))
        self.register_buffer("counts", torch.zeros(capacity, dtype=torch.int64))
        self.regularization: float | None = None  # the lambda of the last solve (diagnostics)

    def expand(self, features: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return features
        return F.relu(features @ self.projection.to(features.dtype))

    @torch.no_grad()
    def observe(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        hidden = self.expand(features.to(STATS_DTYPE))
        self.gram += hidden.T @ hidden
        self.class_sums.index_add_(0, targets, hidden)
        self.counts += torch.bincount(targets, minlength=len(self.counts))
        self._invalidate()

    def _solve(self, live: int) -> tuple[torch.Tensor, torch.Tensor]:
        eigenvalues, vectors = torch.linalg.eigh(self.gram)
        eigenvalues = eigenvalues.clamp(min=0.0)  # G is PSD; rounding can leave tiny negative eigenvalues
        rotated = self.class_sums[:live] @ vectors
        self.regularization = gcv_lambda(eigenvalues, (rotated**2).sum(0), int(self.counts.sum()))
        weight = (rotated / (eigenvalues + self.regularization)) @ vectors.T
        return weight, torch.zeros(live, dtype=STATS_DTYPE, device=weight.device)


Head = LinearHead | NearestClassMeanHead | StreamingLDAHead | RidgeHead
"""What `build_head` makes: `head(features, n_classes)` gives logits, `head.observe(features, targets)` learns."""


@runtime_checkable
class Compensating(Protocol):
    """A head with class means that `compensate` moves with the features (`head.drift_compensation: sdc`)."""

    def compensate(self, features: torch.Tensor, shift: torch.Tensor) -> None: ...


def drift_shift(means: torch.Tensor, counts: torch.Tensor, features: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Semantic drift compensation (Yu et al. 2020): the estimated move of each class mean when `features`
    (batch, d) moved by `shift`: a Gaussian-weighted mean of the shifts, weights exp(-||x_i - mu_k||^2 / s) with
    s the median squared distance (a scale-free kernel width), normalised per class. Zero for unseen rows."""
    live = counts > 0
    estimate = torch.zeros(means.shape, dtype=shift.dtype, device=shift.device)
    if not bool(live.any()) or features.shape[0] == 0:
        return estimate
    distances = torch.cdist(means[live].to(features.dtype), features) ** 2  # (live classes, batch)
    width = distances.median().clamp(min=torch.finfo(distances.dtype).tiny)
    estimate[live] = torch.softmax(-distances / width, dim=1) @ shift
    return estimate


def gcv_lambda(eigenvalues: torch.Tensor, energy: torch.Tensor, samples: int) -> float:
    """The ridge lambda on RIDGE_GRID (relative to the mean eigenvalue) minimising GCV for one-hot targets;
    `eigenvalues` of the Gram matrix, `energy` q_i (see RidgeHead), `samples` N."""
    scale = float(eigenvalues.mean())
    if samples == 0 or scale <= 0.0:
        return 1.0  # nothing learned: any positive lambda gives zero weights
    grid = torch.tensor(RIDGE_GRID, dtype=STATS_DTYPE, device=eigenvalues.device)[:, None] * scale
    shrunk = eigenvalues + grid  # (grid, width)
    rss = (samples - (energy * (eigenvalues + 2 * grid) / shrunk**2).sum(1)).clamp(min=0.0)
    residual_df = samples - (eigenvalues / shrunk).sum(1)
    gcv = torch.where(residual_df >= 1.0, samples * rss / residual_df**2, math.inf)
    best = int(gcv.argmin()) if bool(torch.isfinite(gcv).any()) else len(RIDGE_GRID) - 1
    return float(grid[best, 0])


def _rows(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """The first n rows of `tensor`, zero rows appended when it has fewer (classes not seen yet)."""
    if tensor.shape[0] >= n:
        return tensor[:n]
    return F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, n - tensor.shape[0]))
