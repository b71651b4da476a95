"""Prequential accounting and the accuracy matrix (docs/method.md section 7)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class PrequentialAccuracy:
    """Accuracy of the predictions made before each update: cumulative, over a sliding window of the
    last `window` records, and per segment (the last `max_segments` segments: a long-running daemon's
    state stays bounded). Rows without a prediction (no class known yet) count as wrong, since the model could
    not answer them."""

    window: int = 500
    max_segments: int = 256
    correct: int = 0
    total: int = 0
    recent: deque = field(default_factory=deque)
    per_segment: dict[int, list[int]] = field(default_factory=dict)

    def update(self, predictions: Sequence[object], labels: Sequence[object], segment: int = 0) -> None:
        counts = self.per_segment.setdefault(segment, [0, 0])
        while len(self.per_segment) > self.max_segments:
            del self.per_segment[min(self.per_segment)]
        for predicted, label in zip(predictions, labels, strict=True):
            hit = int(predicted is not None and predicted == label)
            self.correct += hit
            self.total += 1
            counts[0] += hit
            counts[1] += 1
            self.recent.append(hit)
            if len(self.recent) > self.window:
                self.recent.popleft()

    @property
    def cumulative(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def windowed(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else 0.0

    def segment_accuracy(self) -> dict[int, float]:
        return {s: c / n for s, (c, n) in sorted(self.per_segment.items()) if n}

    def state_dict(self) -> dict:
        return {"window": self.window, "correct": self.correct, "total": self.total, "recent": list(self.recent),
                "per_segment": {str(k): v for k, v in self.per_segment.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.window, self.correct, self.total = state["window"], state["correct"], state["total"]
        self.recent = deque(state["recent"])
        self.per_segment = {int(k): list(v) for k, v in state["per_segment"].items()}


def average_accuracy(matrix: Sequence[Sequence[float]]) -> float:
    """A_T = mean_j R[T, j] over the segments seen, with R[i][j] the accuracy on segment j's held-out
    data after learning through segment i (lower triangle used)."""
    last = len(matrix) - 1
    return sum(matrix[last][: last + 1]) / (last + 1)


def forgetting(matrix: Sequence[Sequence[float]]) -> float:
    """F = mean over j < T of (max_{l < T} R[l, j] - R[T, j]); 0 for a single segment."""
    last = len(matrix) - 1
    if last == 0:
        return 0.0
    drops = [max(matrix[i][j] for i in range(j, last)) - matrix[last][j] for j in range(last)]
    return sum(drops) / last


def backward_transfer(matrix: Sequence[Sequence[float]]) -> float:
    """BWT = mean over j < T of (R[T, j] - R[j, j]); negative means forgetting."""
    last = len(matrix) - 1
    if last == 0:
        return 0.0
    return sum(matrix[last][j] - matrix[j][j] for j in range(last)) / last
