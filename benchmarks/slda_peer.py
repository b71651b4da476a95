"""slda-peer: pegp-stream's streaming LDA head (`head.kind: slda`) against avalanche-lib's own `StreamingLDA` on
the same frozen features (issue 10: "our slda agrees with avalanche's StreamingLDA").

    python -m benchmarks.evidence slda-peer [--seeds 0,1,2] [--limit-per-class 150] [--test-limit-per-class 50]

Per seed and stream (S1 and S2 of evidence.py, same subsets) the committed backbone's pooled features
(`pet.kind: none`, `Learner.features`) of the training stream and of the test sets are computed once. The
training features then go, in stream order, to
- ours: a `StreamingLDAHead` (shrinkage `--shrinkage`), `observe` in batches of 16 as the learner does;
- avalanche's: a `StreamingLDA` (same `shrinkage_param`, `slda_model` the identity), one row at a time through
  its public `fit(x, y)`, which is what its `training_epoch` does with each row of a mini-batch after the
  feature extractor (tests/test_slda_peer.py checks that its `train()` gives the same state).
Both are evaluated, like eval_run, once each segment's last training sample is in: on the test data of the
segments seen so far, argmax over the classes seen so far (class index = order of first appearance).
avalanche's `predict` scores all `num_classes`, unseen ones at 0; its scores are cut to the same seen classes,
and `unseen_picks` counts how often its uncut argmax would have picked an unseen class.
Columns: final accuracy over all test images (acc_*), the share of identical final predictions (agree), the
share over every evaluation of the accuracy matrix (agree_all), A and F from that matrix, and the relative
Frobenius gap between the two final covariances (avalanche's Sigma against ours). agree_fixed is the final
agreement with a second avalanche StreamingLDA fed through `fit_per_class` (its recursion with per-class
weights; its `predict` unchanged): what remains once avalanche's approximation is taken out.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .common import format_table, progress, write_csv

BATCH = 16  # EvalConfig.batch_size's default: the learner observes this many rows per step
FEATURE_BATCH = 256
TARGET_AGREEMENT = 0.99
COLUMNS = ["stream", "seed", "classes", "train", "test", "shrinkage", "acc_ours", "acc_avalanche", "agree",
           "agree_all", "agree_fixed", "A_ours", "A_avalanche", "F_ours", "F_avalanche", "unseen_picks", "sigma_gap",
           "seconds"]


def avalanche_slda(dim: int, classes: int, shrinkage: float) -> Any:
    """avalanche's StreamingLDA on precomputed features: the identity as its feature extractor, no loggers."""
    # Quiet: qpsolvers warns at import when it finds no QP solver (none is used here), and avalanche's
    # EvaluationPlugin warns that no loggers were given (none are wanted).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from avalanche.training import StreamingLDA
        from avalanche.training.plugins import EvaluationPlugin

        return StreamingLDA(slda_model=nn.Identity(), criterion=nn.CrossEntropyLoss(), input_size=dim,
                            num_classes=classes, shrinkage_param=shrinkage, evaluator=EvaluationPlugin(loggers=[]))


class FrozenFeatures:
    """Pooled features of the frozen backbone, computed once per sample (split, data set, row) and reused across
    the streams of a seed (S1 and S2 hold the same samples in another order)."""

    def __init__(self, learner: Any) -> None:
        self.learner = learner
        self.cache: dict[tuple[str, str, int], torch.Tensor] = {}

    def of(self, stream: Any, split: str) -> tuple[torch.Tensor, list[str], list[int]]:
        """(features in stream order, labels, segments) of a LabelledStream read from `split`."""
        keys = [(split, stream.parts[item.source].name, item.index) for item in stream.items]
        missing = [(key, item) for key, item in zip(keys, stream.items, strict=True) if key not in self.cache]
        for start in range(0, len(missing), FEATURE_BATCH):
            chunk = missing[start : start + FEATURE_BATCH]
            images = self.learner.prepare([stream.record(item).image for _, item in chunk])
            for (key, _), row in zip(chunk, self.learner.features(images), strict=True):
                self.cache[key] = row
        records = [stream.record(item) for item in stream.items]
        return torch.stack([self.cache[key] for key in keys]), [r.label for r in records], [r.segment for r in records]


def compare(train: tuple, tests: Sequence[tuple[torch.Tensor, list[str]]], shrinkage: float) -> dict[str, Any]:
    """Feed both heads the training stream; evaluate both after every segment. `train`: (features, labels,
    segments) in stream order; `tests`: per segment (features, labels)."""
    from pegp_stream.core.heads import StreamingLDAHead
    from pegp_stream.evaluation.prequential import average_accuracy, forgetting

    features, labels, segments = train
    classes = list(dict.fromkeys(labels))
    index = {label: i for i, label in enumerate(classes)}
    targets = torch.tensor([index[label] for label in labels])
    ours = StreamingLDAHead(len(classes), features.shape[1], shrinkage)
    theirs = avalanche_slda(features.shape[1], len(classes), shrinkage)
    fixed = avalanche_slda(features.shape[1], len(classes), shrinkage)
    test_targets = [torch.tensor([index[label] for label in t_labels]) for _, t_labels in tests]
    matrices: dict[str, list[list[float]]] = {"ours": [], "avalanche": []}
    counts = {"agree": 0, "unseen": 0, "total": 0}
    start = 0
    for end in evaluation_points(segments):
        for first in range(start, end, BATCH):
            rows = slice(first, min(first + BATCH, end))
            ours.observe(features[rows], targets[rows])
            for x, y in zip(features[rows], targets[rows], strict=True):
                theirs.fit(x[None], y[None])
                fit_per_class(fixed, x[None], y[None])
        start, seen = end, int(targets[:end].max()) + 1
        for name in matrices:
            matrices[name].append([])
        for (x, _), y in zip(tests[: len(matrices["ours"])], test_targets, strict=False):
            mine, peer, unseen = _predictions(ours, theirs, x, seen)
            counts["agree"] += int((mine == peer).sum())
            counts["unseen"] += unseen
            counts["total"] += len(y)
            matrices["ours"][-1].append(float((mine == y).float().mean()))
            matrices["avalanche"][-1].append(float((peer == y).float().mean()))
    x = torch.cat([f for f, _ in tests])
    y = torch.cat(test_targets)
    mine, peer, _ = _predictions(ours, theirs, x, len(classes))
    _, fixed_peer, _ = _predictions(ours, fixed, x, len(classes))
    covariance = ours.scatter / int(ours.counts.sum())
    return {
        "classes": len(classes), "train": len(labels), "test": len(y), "shrinkage": shrinkage,
        "acc_ours": float((mine == y).float().mean()), "acc_avalanche": float((peer == y).float().mean()),
        "agree": float((mine == peer).float().mean()), "agree_all": counts["agree"] / counts["total"],
        "agree_fixed": float((mine == fixed_peer).float().mean()),
        "A_ours": average_accuracy(matrices["ours"]), "A_avalanche": average_accuracy(matrices["avalanche"]),
        "F_ours": forgetting(matrices["ours"]), "F_avalanche": forgetting(matrices["avalanche"]),
        "unseen_picks": counts["unseen"] / counts["total"],
        "sigma_gap": float(torch.linalg.norm(theirs.Sigma.double() - covariance) / torch.linalg.norm(covariance)),
    }


@torch.no_grad()
def fit_per_class(model: Any, x: torch.Tensor, y: torch.Tensor) -> None:
    """avalanche's `StreamingLDA.fit` with one change, to measure what its recursion costs: the sample's
    scatter is weighted by its class's count, c / (c + 1) (Welford's update of the within-class scatter),
    instead of the global n / (n + 1). That makes Sigma the exact within-class covariance and drops the
    uncentred x x^T that avalanche adds for each class's first sample (scored against a zero mean)."""
    count = model.cK[y]
    shift = x - model.muK[y]
    updates = model.num_updates
    model.Sigma = (updates * model.Sigma + shift.T @ shift * (count / (count + 1))) / (updates + 1)
    model.muK[y] += shift / (count + 1)
    model.cK[y] += 1
    model.num_updates += 1


def _predictions(ours: Any, theirs: Any, x: torch.Tensor, seen: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(our class indices, avalanche's over the `seen` classes, how many of its uncut argmaxes are unseen)."""
    scores = theirs.predict(x)
    return ours(x, seen).argmax(1), scores[:, :seen].argmax(1), int((scores.argmax(1) >= seen).sum())


def evaluation_points(segments: Sequence[int]) -> list[int]:
    """Stream positions (exclusive ends) after which the accuracy matrix gets its next row, as in eval_run:
    row i once every sample of segments 0..i has been seen."""
    last: dict[int, int] = {}
    for position, segment in enumerate(segments):
        last[segment] = position + 1
    ends, reach = [], 0
    for segment in sorted(last):
        reach = max(reach, last[segment])
        ends.append(reach)
    return ends


def test_sets(features: torch.Tensor, labels: list[str], segments: list[int]) -> list[tuple[torch.Tensor, list[str]]]:
    """Per segment, in segment order: (features, labels) of its test samples."""
    order = sorted(set(segments))
    return [(features[[i for i, s in enumerate(segments) if s == seg]],
             [label for label, s in zip(labels, segments, strict=True) if s == seg]) for seg in order]


def run(args: argparse.Namespace, backbone: Path | None) -> int:
    """The whole comparison: prints the table, writes `slda_peer.csv` to `args.out`; 1 if a row misses the
    agreement target."""
    from pegp_stream.config import HeadConfig, LearnerConfig, StreamConfig, to_config
    from pegp_stream.core.learner import create_learner
    from pegp_stream.data.streams import build_stream

    from .evidence import learner, stream

    shrinkage = args.shrinkage or HeadConfig.model_fields["slda_shrinkage"].default
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        frozen = FrozenFeatures(create_learner(to_config(LearnerConfig, learner("none", False, "slda", seed,
                                                                                 args.quick, backbone))))
        for name, task_free in (("S1", False), ("S2", True)):
            started = time.perf_counter()
            config = to_config(StreamConfig, stream(task_free, seed, args.quick, args.limit_per_class))
            train = frozen.of(build_stream(config), "train")
            test = frozen.of(build_stream(config.model_copy(update={
                "split": "test", "blurry": 0.0, "limit_per_class": args.test_limit_per_class})), "test")
            row = {"stream": name, "seed": seed, **compare(train, test_sets(*test), shrinkage)}
            rows.append(row | {"seconds": time.perf_counter() - started})
            progress(f"{name} seed {seed}: agree {row['agree']:.4f}, acc ours {row['acc_ours']:.4f} "
                     f"avalanche {row['acc_avalanche']:.4f}")
    print(format_table(rows + summary(rows), COLUMNS))
    write_csv(args.out / "slda_peer.csv", rows, COLUMNS)
    return 0 if all(r["agree"] >= TARGET_AGREEMENT for r in rows) else 1


def summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One mean row per stream (seed column "mean")."""
    means = []
    for name in dict.fromkeys(r["stream"] for r in rows):
        chosen = [r for r in rows if r["stream"] == name]
        numbers = {c: statistics.fmean(r[c] for r in chosen) for c in COLUMNS[6:]}
        means.append({"stream": name, "seed": "mean", **{c: chosen[0][c] for c in COLUMNS[2:6]}, **numbers})
    return means
