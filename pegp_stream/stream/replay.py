"""Labelled streams built from data sets in memory: the order a producer sends and a replay reads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..config import StreamConfig
from ..datasets import LabelledImages, load_dataset
from .decode import canonical_label
from .schedule import StreamItem, class_incremental_schedule, concat_schedules


@dataclass(frozen=True)
class StreamRecord:
    """One labelled sample of the stream: uint8 pixels, external label, true segment, position."""

    position: int
    image: np.ndarray
    label: str | int
    segment: int


@dataclass(frozen=True)
class LabelledStream:
    items: list[StreamItem]
    parts: list[LabelledImages]
    label_names: list[list[str | int]]  # per part: class index -> external label (canonical form)

    def __len__(self) -> int:
        return len(self.items)

    def record(self, item: StreamItem) -> StreamRecord:
        part = self.parts[item.source]
        label = self.label_names[item.source][int(part.labels[item.index])]
        return StreamRecord(item.position, part.images[item.index], label, item.segment)

    def __iter__(self) -> Iterator[StreamRecord]:
        return (self.record(item) for item in self.items)

    def batches(self, size: int) -> Iterator[list[StreamRecord]]:
        for start in range(0, len(self.items), size):
            yield [self.record(item) for item in self.items[start : start + size]]


def build_stream(config: StreamConfig, split: str | None = None) -> LabelledStream:
    """Load every data set of `config` and chain their class-incremental schedules. External labels are
    the class names, prefixed with the data set name when several data sets are chained, in the canonical
    form records have (`canonical_label`: digits' "3" is 3)."""
    split = split or config.split
    parts = [load_dataset(name, split=split, data_dir=config.data_dir) for name in config.datasets]
    schedules = [
        class_incremental_schedule(
            part.labels, config.classes_per_segment, seed=config.seed + i, shuffle_classes=config.shuffle_classes,
            blurry=config.blurry, limit_per_class=config.limit_per_class,
        )
        for i, part in enumerate(parts)
    ]
    prefix = len(parts) > 1
    names = [[canonical_label(f"{part.name}/{c}" if prefix else c) for c in part.class_names] for part in parts]
    return LabelledStream(concat_schedules(*schedules), parts, names)
