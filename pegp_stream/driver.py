"""Learn a stream with boundaries: the one prequential step the daemon, eval and replay all drive.

A batch is split into runs where a marker boundary falls (`BoundaryPolicy.marker_starts`); for each run:

    policy.before(markers)        a marker or an operator request: consolidate before the run is learned
    learner.learn_many(run)       prequential predictions, then one projected step
    policy.after(loss, features)  per accepted sample: a detector boundary is consolidated after the run

so a marker boundary falls exactly between runs and a detector boundary after the run it was detected in.
Positions count accepted samples: a boundary at position p comes after the p-th learned sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pegp_stream.core.learner import Label, Learner, LearnResult
from pegp_stream.drift import BoundaryPolicy, Cause, Marker


@dataclass(frozen=True)
class Boundary:
    cause: Cause
    position: int  # accepted samples learned before it


@dataclass(frozen=True)
class Run:
    """One `learn_many` step: rows `start`..`stop` of the batch; `accepted` are row indices within the run
    (the rows not in `result.rejected`); `seconds` the time of the step alone."""

    start: int
    result: LearnResult
    accepted: list[int]
    seconds: float

    @property
    def stop(self) -> int:
        return self.start + len(self.result.predictions)


@dataclass(frozen=True)
class Step:
    runs: list[Run] = field(default_factory=list)
    boundaries: list[Boundary] = field(default_factory=list)


class StreamDriver:
    """Drives `learner` over batches with the boundaries `policy` answers. `consolidate(cause)` applies a
    boundary to the learner (default `learner.consolidate()`; the daemon adds its accounting); the driver then
    tells the policy (`policy.consolidated`)."""

    def __init__(self, learner: Learner, policy: BoundaryPolicy,
                 consolidate: Callable[[Cause], Any] | None = None) -> None:
        self.learner, self.policy = learner, policy
        self._consolidate = consolidate or (lambda cause: learner.consolidate())

    def learn(self, images: Sequence[np.ndarray], labels: Sequence[Label], markers: Sequence[Marker | None],
              position: int, learned: Callable[[Run], None] | None = None) -> Step:
        """Learn one batch of decoded images (as `Learner.prepare` takes) with their labels and segment
        markers; `position`: accepted samples learned before the batch. `learned(run)` is called once each run
        is learned, before a detector boundary it completed is applied."""
        step = Step()
        cuts = [0, *[i for i in self.policy.marker_starts(markers) if i], len(images)]
        for start, stop in zip(cuts, cuts[1:], strict=False):
            if stop == start:
                continue
            cause = self.policy.before(markers[start], markers[start + 1 : stop])
            if cause:
                step.boundaries.append(self._boundary(cause, position))
            run = self._learn_run(images[start:stop], labels[start:stop], start)
            step.runs.append(run)
            if learned:
                learned(run)
            position += len(run.accepted)
            detected, features = None, run.result.features
            if features is not None:  # None only when every row was rejected: then no row was accepted
                for i in run.accepted:
                    detected = self.policy.after(run.result.sample_losses[i], features[i]) or detected
            if detected:
                step.boundaries.append(self._boundary(detected, position))
        return step

    def idle(self, position: int) -> Boundary | None:
        """No samples arrived: an operator request is applied now rather than with the next batch."""
        return self._boundary("operator", position) if self.policy.before(None) else None

    def _learn_run(self, images: Sequence[np.ndarray], labels: Sequence[Label], start: int) -> Run:
        batch = self.learner.prepare(images)
        started = time.perf_counter()
        out = self.learner.learn_many(batch, labels)
        seconds = time.perf_counter() - started
        return Run(start, out, [i for i in range(len(labels)) if i not in out.rejected], seconds)

    def _boundary(self, cause: Cause, position: int) -> Boundary:
        self._consolidate(cause)
        self.policy.consolidated(cause)
        return Boundary(cause, position)
