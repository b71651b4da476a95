"""Snapshots: immutable, versioned copies of the learned state that readers predict on.

A `Predictor` holds the learner's `frozen_copy`: a second module tree over the same frozen backbone tensors
(shared, never copied) with its own copy of the PET tensors and head, predicting through the learner's own
`predict_many`. Publishing builds a new predictor and swaps one reference; a request keeps
the predictor it started with, so it never sees a half-updated model and never waits on a training step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pegp_stream.core.learner import Learner, Prediction


@dataclass(frozen=True)
class ModelInfo:
    version: int
    classes: list
    segments: int
    ranks: dict[str, int]
    records_learned: int
    published_at: float = field(default_factory=time.time)


class Predictor:
    """Predicts with a frozen copy of a learner (`Learner.frozen_copy`) at one moment."""

    def __init__(self, learner: Learner, info: ModelInfo, warm: bool = True) -> None:
        self.model = learner.frozen_copy()
        self.info = info
        self.input_size = learner.input_size
        if warm:  # the first request pays no lazy init (later snapshots run on initialised kernels)
            self.predict(torch.zeros(1, *self.input_size))
        self.warmed = True

    def prepare(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Decoded images as model input (`Learner.prepare`)."""
        return self.model.prepare(images)

    def predict(self, images: torch.Tensor) -> Prediction:
        """`Learner.predict_many` of the frozen copy: the classes are those known when it was made."""
        return self.model.predict_many(images)


class SnapshotPublisher:
    """Holds the newest predictor; `publish` is called by the learner's thread, `current` by readers."""

    def __init__(self) -> None:
        self._current: Predictor | None = None
        self._lock = threading.Lock()  # serialises publishers only; readers never take it

    @property
    def current(self) -> Predictor | None:
        return self._current

    def publish(self, learner: Learner, records_learned: int) -> Predictor:
        info = ModelInfo(version=learner.updates, classes=list(learner.classes), segments=learner.consolidations + 1,
                         ranks=learner.ranks, records_learned=records_learned)
        predictor = Predictor(learner, info, warm=self._current is None)
        with self._lock:
            if self._current is None or info.version >= self._current.info.version:
                self._current = predictor  # one reference assignment: readers see old or new, never a mix
        return predictor
