"""Snapshots: immutable, versioned copies of the learned state that readers predict on.

A `Predictor` is a second module tree over the same frozen backbone tensors (shared, never copied) with its own
copy of the PET tensors and head. Publishing builds a new predictor and swaps one reference; a request keeps
the predictor it started with, so it never sees a half-updated model and never waits on a training step.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field

import torch

from ..learner import Learner, Prediction


@dataclass(frozen=True)
class ModelInfo:
    version: int
    classes: list
    segments: int
    ranks: dict[str, int]
    records_learned: int
    published_at: float = field(default_factory=time.time)


class Predictor:
    """Predicts with a frozen copy of a learner's PET tensors and head at one moment."""

    def __init__(self, learner: Learner, info: ModelInfo, warm: bool = True) -> None:
        shared = {id(t): t for t in _frozen_tensors(learner)}
        self.backbone = copy.deepcopy(learner.backbone, memo=dict(shared))
        self.head = copy.deepcopy(learner.head)
        self.info = info
        self.input_size = learner.input_size
        self.input_config = learner.input_config
        self._autocast = learner._autocast
        if warm:  # the first request pays no lazy init (later snapshots run on initialised kernels)
            self.predict(torch.zeros(1, *self.input_size))
        self.warmed = True

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        classes = self.info.classes
        with self._autocast():
            pooled = self.backbone.forward_head(self.backbone.forward_features(images), pre_logits=True)
        if not classes:
            return Prediction([None] * images.shape[0], torch.zeros(images.shape[0], 0), [])
        probs = self.head(pooled.float(), len(classes)).softmax(dim=1)
        return Prediction([classes[i] for i in probs.argmax(dim=1).tolist()], probs, list(classes))


def _frozen_tensors(learner: Learner) -> list[torch.Tensor]:
    trained = {id(p) for p in learner.pet_parameters.values()}
    tensors = [p for p in learner.backbone.parameters() if id(p) not in trained]
    return tensors + list(learner.backbone.buffers())


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
