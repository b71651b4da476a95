"""Labelled streams built from data sets in memory: the order a producer sends and a replay reads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from pegp_stream.config import StreamConfig
from pegp_stream.data.corrupt import corrupt_images
from pegp_stream.data.datasets import LabelledImages, load_dataset
from pegp_stream.data.schedule import (
    StreamItem,
    class_incremental_schedule,
    concat_schedules,
    domain_incremental_schedule,
)
from pegp_stream.inputs.decode import canonical_label


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

    def batches(self, size: int, split_at_segments: bool) -> Iterator[list[StreamRecord]]:
        """The records in order, in batches of at most `size`; with `split_at_segments`, a batch ends where the
        segment changes (a producer that marks segments flushes there), so no batch straddles two segments."""
        batch: list[StreamRecord] = []
        for record in self:
            if batch and (len(batch) == size or (split_at_segments and record.segment != batch[-1].segment)):
                yield batch
                batch = []
            batch.append(record)
        if batch:
            yield batch


def build_stream(config: StreamConfig, split: str | None = None) -> LabelledStream:
    """Load every data set of `config` and chain their schedules: class-incremental, or domain-incremental
    (the training parts of the corrupted pools) when `config.corruptions` is set. External labels are the
    class names, prefixed with the data set name when several data sets are chained, in the canonical form
    records have (`canonical_label`: digits' "3" is 3)."""
    return _build(config, split or config.split, heldout=False)


def build_test_stream(config: StreamConfig, limit_per_class: int | None) -> LabelledStream:
    """The held-out data of `config`'s segments, without blurring, at most `limit_per_class` per class (and
    segment): a class-incremental stream's schedule over the test split, or a domain stream's held-out
    pools of its own split (disjoint from its training pools)."""
    if config.corruptions:
        return _build(config.model_copy(update={"blurry": 0.0, "limit_per_class": limit_per_class}), config.split,
                      heldout=True)
    return build_stream(config.model_copy(update={"split": "test", "blurry": 0.0, "limit_per_class": limit_per_class}))


def _build(config: StreamConfig, split: str, heldout: bool) -> LabelledStream:
    datasets = [load_dataset(name, split=split, data_dir=config.data_dir) for name in config.datasets]
    schedules, parts = [], []
    for i, dataset in enumerate(datasets):
        if config.corruptions:
            schedule, corrupted = _domain(dataset, config, config.seed + i, heldout)
        else:
            schedule, corrupted = class_incremental_schedule(
                dataset.labels, config.classes_per_segment, seed=config.seed + i,
                shuffle_classes=config.shuffle_classes, blurry=config.blurry, limit_per_class=config.limit_per_class,
            ), [dataset]
        schedules.append(schedule)
        parts += corrupted
    prefix = len(datasets) > 1
    names = [[canonical_label(f"{part.name}/{c}" if prefix else c) for c in part.class_names] for part in parts]
    return LabelledStream(concat_schedules(*schedules), parts, names)


def _domain(
    dataset: LabelledImages, config: StreamConfig, seed: int, heldout: bool
) -> tuple[list[StreamItem], list[LabelledImages]]:
    """A domain-incremental schedule over `dataset` and its parts: segment k's rows corrupted with
    ``config.corruptions[k]``, as part (source) k; each item's index is its row in that part."""
    schedule = domain_incremental_schedule(
        dataset.labels, len(config.corruptions), config.holdout, heldout=heldout, seed=seed, blurry=config.blurry,
        limit_per_class=config.limit_per_class,
    )
    rows = [np.array(sorted({item.index for item in schedule if item.segment == k}), dtype=np.int64)
            for k in range(len(config.corruptions))]
    parts = [
        LabelledImages(corrupt_images(dataset.images[r], name, config.severity, seed, r), dataset.labels[r],
                       dataset.class_names, dataset.name)
        for name, r in zip(config.corruptions, rows, strict=True)
    ]
    items = [replace(item, index=int(np.searchsorted(rows[item.segment], item.index)), source=item.segment)
             for item in schedule]
    return items, parts
