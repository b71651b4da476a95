"""Learn a stream with boundaries: the one prequential step the daemon, eval and replay all drive.

A batch is split into runs where a marker boundary falls (`BoundaryPolicy.marker_starts`); for each run:

    policy.before(markers)        a marker or an operator request: consolidate before the run is learned
    learner.learn_many(run)       prequential predictions, then one projected step
    policy.after(loss, features)  per accepted sample: a detector boundary is consolidated after the run

so a marker boundary falls exactly between runs and a detector boundary after the run it was detected in.
Positions count accepted samples: a boundary at position p comes after the p-th learned sample.

Several ranks (the learner's collective, docs/method.md section 9) step in lock step: each passes its own
micro-batch (possibly empty), and the step's global batch is the ranks' micro-batches concatenated in rank order.
Every rank gathers the global markers and operator requests, cuts the global batch into the same runs, learns its
own rows of each run (none is allowed: the run is still one collective step), and feeds the policy the gathered
signal of every accepted row in global order; so every rank holds the same policy and makes the same boundaries
at the same positions, which are those one rank fed the global batch makes. With one rank the global batch is the
batch and every gather the identity.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

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
    tells the policy (`policy.consolidated`). `position` is the global count of accepted samples learned, kept
    current while a step runs (read it from `consolidate` for the position of the boundary being applied)."""

    def __init__(self, learner: Learner, policy: BoundaryPolicy,
                 consolidate: Callable[[Cause], Any] | None = None) -> None:
        self.learner, self.policy = learner, policy
        self._consolidate = consolidate or (lambda cause: learner.consolidate())
        self.position = 0

    def learn(self, images: Sequence[np.ndarray], labels: Sequence[Label], markers: Sequence[Marker | None],
              position: int, learned: Callable[[Run], None] | None = None, requested: bool = False) -> Step:
        """Learn one batch of decoded images (as `Learner.prepare` takes) with their labels and segment
        markers; `position`: accepted samples of the global stream learned before the batch. `learned(run)` is
        called once each run is learned, before a detector boundary it completed is applied. `requested`: an
        operator asked this rank for a boundary (as `policy.request()`, but taken in with the other ranks'
        requests at the step's start). A step whose global batch is empty applies a pending operator request."""
        self.position = position
        shares = self.learner.collective.all_gather_object((list(markers), requested))
        if any(asked for _, asked in shares):
            self.policy.request()
        everyone = [marker for share, _ in shares for marker in share]
        mine = sum(len(share) for share, _ in shares[: self.learner.collective.rank])  # my first global row
        step = Step()
        if not everyone:
            if self.policy.before(None):
                step.boundaries.append(self._boundary("operator"))
            return step
        cuts = [0, *[i for i in self.policy.marker_starts(everyone) if i], len(everyone)]
        for start, stop in zip(cuts, cuts[1:], strict=False):
            if stop == start:
                continue
            cause = self.policy.before(everyone[start], everyone[start + 1 : stop])
            if cause:
                step.boundaries.append(self._boundary(cause))
            first, last = min(max(start - mine, 0), len(images)), min(max(stop - mine, 0), len(images))
            run = self._learn_run(images[first:last], labels[first:last], first)
            step.runs.append(run)
            if learned:
                learned(run)
            if run.result.features is not None:  # None only when no rank accepted a row
                detected = self._detect(run)
                if detected:
                    step.boundaries.append(self._boundary(detected))
        return step

    def _learn_run(self, images: Sequence[np.ndarray], labels: Sequence[Label], start: int) -> Run:
        batch = self.learner.prepare(images)
        started = time.perf_counter()
        out = self.learner.learn_many(batch, labels)
        seconds = time.perf_counter() - started
        return Run(start, out, [i for i in range(len(labels)) if i not in out.rejected], seconds)

    def _detect(self, run: Run) -> Cause | None:
        """Feed the policy every rank's accepted rows of the run, in global order (a rejected row has a NaN
        loss); advances `position` past them. "detector" when a boundary is due after the run."""
        result = run.result
        assert result.features is not None
        losses = torch.tensor([math.nan if loss is None else loss for loss in result.sample_losses],
                              dtype=torch.float64)
        features, losses = self.learner.collective.all_gather([result.features, losses])
        detected = None
        for loss, row in zip(losses.tolist(), features, strict=True):
            if math.isfinite(loss):
                self.position += 1
                detected = self.policy.after(loss, row) or detected
        return detected

    def _boundary(self, cause: Cause) -> Boundary:
        self._consolidate(cause)
        self.policy.consolidated(cause)
        return Boundary(cause, self.position)
