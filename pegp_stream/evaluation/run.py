"""Evaluate a learner configuration on a stream with held-out test data (docs/method.md section 7).

The learner sees the training stream once, in order, as the daemon would: prequential predictions, then a
projected step. Boundaries reach it from segment markers, or, on a task-free stream (markers off), from the
drift policy's detector. Independently of what the learner is told, the runner knows where each true
segment's training data ends and evaluates the held-out test data of every segment seen so far there:
row i of the accuracy matrix R is measured once segment i's last training sample has been learned.

Two readouts beside the learner's own head tell where accuracy is lost: `probe` refits a head on half of the
held-out data at every segment end; `refit` refits one at the end on every training sample's final features (an
oracle: what the features hold once no stored statistic is stale).

`joint_epochs > 0` gives the offline upper reference instead: all training samples shuffled together,
several epochs, no boundaries, one evaluation at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pegp_stream.config import EvalConfig
from pegp_stream.core.heads import build_head
from pegp_stream.core.learner import Label, Learner, create_learner
from pegp_stream.data.streams import LabelledStream, StreamRecord, build_stream, build_test_stream
from pegp_stream.drift import BoundaryPolicy
from pegp_stream.driver import StreamDriver
from pegp_stream.evaluation.prequential import PrequentialAccuracy, average_accuracy, backward_transfer, forgetting
from pegp_stream.evaluation.result import EvalResult

CURVE_EVERY = 100  # records between points of the prequential curve


def run_eval(
    config: EvalConfig,
    learner: Learner | None = None,
    log: Callable[[str], None] | None = None,
) -> EvalResult:
    learner = learner or create_learner(config.learner)
    train = build_stream(config.stream)
    test = build_test_stream(config.stream, config.test_limit_per_class)
    tests = held_out_sets(test, learner, config.eval_batch_size)
    if config.joint_epochs:
        return _run_joint(config, learner, train, tests, log)
    return _run_online(config, learner, train, tests, log)


# ------------------------------------------------------------------------------------------------ online


def _run_online(config, learner, train, tests, log) -> EvalResult:
    segments = len(tests)
    remaining = np.bincount([item.segment for item in train.items], minlength=segments)
    policy = BoundaryPolicy(config.drift.model_copy(update={"markers": config.stream.markers}))
    prequential = PrequentialAccuracy()
    curve: list[tuple[int, float, float]] = []
    square: list[list[float]] = []  # row i: accuracy on segments 0..i after learning segment i
    probe_square: list[list[float]] = []
    boundaries: list[dict] = []
    true_boundaries = _true_boundaries(train)
    train_seconds = eval_seconds = 0.0
    driver, records = StreamDriver(learner, policy), 0
    for batch in train.batches(config.batch_size, config.stream.markers):
        started = time.perf_counter()
        labels = [r.label for r in batch]
        step = driver.learn([r.image for r in batch], labels, [r.segment for r in batch], records)
        records += len(batch)
        boundaries += [{"position": b.position, "cause": b.cause} for b in step.boundaries]
        train_seconds += time.perf_counter() - started
        for run in step.runs:
            prequential.update(run.result.predictions, labels[run.start : run.stop], segment=batch[0].segment)
        if not curve or records - curve[-1][0] >= CURVE_EVERY:
            curve.append((records, round(prequential.windowed, 4), round(prequential.cumulative, 4)))
        for record in batch:
            remaining[record.segment] -= 1
        while len(square) < segments and remaining[len(square)] == 0:
            started = time.perf_counter()
            seen = len(square) + 1
            square.append([accuracy(learner, *tests[j]) for j in range(seen)])
            if config.probe:
                probe_square.append(probe_accuracies(learner, tests[:seen]))
            eval_seconds += time.perf_counter() - started
            if log:
                log(f"{config.name}: after segment {seen - 1} ({records} records): "
                    f"{' '.join(f'{v:.2f}' for v in square[-1])}")
    curve.append((records, round(prequential.windowed, 4), round(prequential.cumulative, 4)))
    measured: dict[str, Any] = {}
    if config.probe:
        measured = {"probe_matrix": _padded(probe_square, segments),
                    "probe_average_accuracy": average_accuracy(probe_square),
                    "probe_forgetting": forgetting(probe_square)}
    if config.refit:
        oracle = learner.frozen_copy()  # the learner itself keeps the head it learned
        oracle.refit_head(_batches(train, config.batch_size, learner))
        row = [accuracy(oracle, *t) for t in tests]
        measured |= {"refit_row": row, "refit_average_accuracy": sum(row) / len(row)}
    return _result(
        config, learner, tests, **measured, matrix=_padded(square, segments), average_accuracy=average_accuracy(square),
        forgetting=forgetting(square), backward_transfer=backward_transfer(square),
        prequential_accuracy=prequential.cumulative, curve=curve, true_boundaries=true_boundaries,
        learner_boundaries=boundaries, records=records, train_seconds=train_seconds, eval_seconds=eval_seconds,
    )


def _padded(square: list[list[float]], segments: int) -> list[list[float | None]]:
    """The accuracy matrix: each row of `square` with None for the segments not learned yet."""
    return [[*row, *[None] * (segments - len(row))] for row in square]


def _result(config: EvalConfig, learner: Learner, tests: list, **measured) -> EvalResult:
    """An EvalResult with what every run reports besides its measurements: config, spaces, test data."""
    return EvalResult(
        name=config.name, config=config.model_dump(mode="json"), segments=len(tests), ranks=learner.ranks,
        capacities={space.name: space.capacity for space in learner.spaces},
        test_samples=sum(len(labels) for _, labels in tests),
        segment_labels=[sorted(set(labels)) for _, labels in tests], **measured,
    )


def _true_boundaries(stream: LabelledStream) -> list[int]:
    """Positions where the next segment's first sample appears."""
    first: dict[int, int] = {}
    for item in stream.items:
        first.setdefault(item.segment, item.position)
    return [first[s] for s in sorted(first) if s > 0]


# ------------------------------------------------------------------------------------------------ joint


def _run_joint(config, learner, train, tests, log) -> EvalResult:
    generator = np.random.default_rng(config.stream.seed)
    started, records = time.perf_counter(), 0
    for epoch in range(config.joint_epochs):
        for images, labels in _batches(train, config.batch_size, learner, generator.permutation(len(train.items))):
            learner.learn_many(images, labels)
            records += len(labels)
        if log:
            log(f"{config.name}: joint epoch {epoch + 1}/{config.joint_epochs} done")
    # a head of statistics gathered over the epochs holds features that have moved since: refit at the end
    learner.refit_head(_batches(train, config.batch_size, learner))
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    row = [accuracy(learner, *t) for t in tests]
    return _result(
        config, learner, tests, matrix=[row], average_accuracy=sum(row) / len(row), forgetting=None,
        backward_transfer=None, prequential_accuracy=None, curve=[], true_boundaries=[], learner_boundaries=[],
        records=records, train_seconds=train_seconds, eval_seconds=time.perf_counter() - started,
    )


def _batches(train: LabelledStream, batch_size: int, learner: Learner,
             order: Sequence[int] | np.ndarray | None = None):
    """(model-input images, labels) of the training items, `batch_size` at a time, in `order` (default: as
    stored)."""
    order = range(len(train.items)) if order is None else order
    for start in range(0, len(order), batch_size):
        batch = [train.record(train.items[i]) for i in order[start : start + batch_size]]
        yield learner.prepare([r.image for r in batch]), [r.label for r in batch]


# ------------------------------------------------------------------------------------------------ test data


def held_out_sets(test: LabelledStream, learner: Learner,
                  batch_size: int) -> list[tuple[list[torch.Tensor], list[Label]]]:
    """Per segment: the test images as model-input batches (prepared once) and their labels."""
    by_segment: dict[int, list[StreamRecord]] = {}
    for record in test:
        by_segment.setdefault(record.segment, []).append(record)
    sets = []
    for segment in sorted(by_segment):
        records = by_segment[segment]
        batches = [learner.prepare([r.image for r in records[i : i + batch_size]])
                   for i in range(0, len(records), batch_size)]
        sets.append((batches, [r.label for r in records]))
    return sets


def probe_accuracies(learner: Learner, tests: Sequence[tuple[list[torch.Tensor], list[Label]]]) -> list[float]:
    """Per seen segment: accuracy of a readout of the learner's head kind (cosine nearest class mean for a
    linear head, which has no statistics to refit) fit afresh on the current features of the even-numbered
    held-out rows of every seen class, scored on the odd-numbered ones. Against the learner's own accuracy it
    shows how stale the statistics stored as features moved have become."""
    features = [torch.cat([learner.features(images) for images in batches]) for batches, _ in tests]
    classes = sorted({label for _, labels in tests for label in labels}, key=str)
    index = {label: i for i, label in enumerate(classes)}
    targets = [torch.tensor([index[label] for label in labels]) for _, labels in tests]
    config = learner.config.head
    kind = "ncm" if config.kind == "linear" else config.kind
    readout = build_head(config.model_copy(update={"kind": kind, "max_classes": len(classes)}),
                         features[0].shape[1], seed=learner.config.seed, linear_dtype=torch.float64)
    readout.observe(torch.cat([f[0::2] for f in features]), torch.cat([t[0::2] for t in targets]))
    scores = []
    with torch.no_grad():
        for f, t in zip(features, targets, strict=True):
            predicted = readout(f[1::2], len(classes)).argmax(1)
            scores.append((predicted == t[1::2]).float().mean().item())
    return scores


def accuracy(learner: Learner, batches: Sequence[torch.Tensor], labels: Sequence[Label]) -> float:
    predicted: list = []
    for images in batches:
        predicted += learner.predict_many(images).labels
    return sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(labels)
