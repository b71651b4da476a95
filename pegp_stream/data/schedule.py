"""Ordered, segmented streams over a labelled data set: what a producer sends and a benchmark replays.

A schedule is a list of `StreamItem`s, one per sample, in stream order. Its `segment`s are the tasks of a
class-incremental stream (each segment introduces new classes) or of a domain-incremental one (every segment
holds every class, from its own pool of rows, which the caller transforms per segment);
`segment_boundaries` says where they begin.

Example (two classes per segment, seeded order):

>>> import numpy as np
>>> schedule = class_incremental_schedule(np.array([0, 1, 2, 3, 0, 1, 2, 3]), classes_per_segment=2)
>>> [item.segment for item in schedule]
[0, 0, 0, 0, 1, 1, 1, 1]
>>> sorted({item.label for item in schedule if item.segment == 1})
[2, 3]
>>> segment_boundaries(schedule)
[4]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "StreamItem", "class_incremental_schedule", "concat_schedules", "domain_incremental_schedule", "segment_boundaries",
]

MAX_BLURRY = 0.5


@dataclass(frozen=True, slots=True)
class StreamItem:
    """One sample of a stream.

    `index` is its row in the data set `source` (0 unless schedules were concatenated); `label` is the class
    the stream announces (after any label offset); `segment` is the segment the sample truly belongs to,
    even where a blurry boundary moved it; `position` is its place in the stream, from 0.
    """

    index: int
    label: int
    segment: int
    position: int
    source: int = 0

    def __post_init__(self) -> None:
        for field in ("index", "label", "segment", "position", "source"):
            if getattr(self, field) < 0:
                raise ValueError(f"StreamItem.{field} must be >= 0, got {getattr(self, field)}")


def class_incremental_schedule(
    labels: np.ndarray | Sequence[int],
    classes_per_segment: int,
    class_order: Sequence[int] | None = None,
    seed: int = 0,
    shuffle_classes: bool = False,
    blurry: float = 0.0,
    limit_per_class: int | None = None,
) -> list[StreamItem]:
    """A class-incremental stream over the samples whose class labels are `labels` (row i has label i).

    Classes are taken in `class_order` (exactly the classes present), else sorted, or in a seeded shuffle
    when `shuffle_classes`; consecutive runs of `classes_per_segment` of them form segments 0, 1, ... (the
    last may hold fewer). Each segment's samples follow one another in seeded random order. With
    `limit_per_class` only a seeded random subset of that many samples per class is kept; otherwise every
    row appears exactly once.

    `blurry` in [0, 0.5) softens each boundary: the last ``floor(blurry * n_k)`` samples of segment k and
    the first ``floor(blurry * n_k+1)`` of segment k+1 are merged (seeded) so that the share of segment
    k+1 ramps up across that window; samples keep their order within their segment, and nothing else moves.
    The random draws for `blurry` come last, so the same seed without blurring gives the same base order.
    Raises ValueError for invalid arguments.
    """
    label_array = _checked_labels(labels)
    _check_schedule_arguments(classes_per_segment, blurry, limit_per_class)
    rng = np.random.default_rng(seed)
    order = _ordered_classes(label_array, class_order, shuffle_classes, rng)
    if classes_per_segment > len(order):
        raise ValueError(f"classes_per_segment={classes_per_segment} exceeds the {len(order)} classes "
                         "present in labels")
    starts = range(0, len(order), classes_per_segment)
    segment_classes = [order[start:start + classes_per_segment] for start in starts]
    segment_rows = [_segment_rows(label_array, classes, limit_per_class, rng) for classes in segment_classes]
    rows, segments = _blurred_order(segment_rows, blurry, rng)
    return [
        StreamItem(index=int(row), label=int(label_array[row]), segment=int(segment), position=position)
        for position, (row, segment) in enumerate(zip(rows, segments, strict=True))
    ]


def domain_incremental_schedule(
    labels: np.ndarray | Sequence[int],
    segments: int,
    holdout: float,
    heldout: bool = False,
    seed: int = 0,
    blurry: float = 0.0,
    limit_per_class: int | None = None,
) -> list[StreamItem]:
    """A domain-incremental stream: `segments` segments, each holding every class present in `labels`.

    Each class's rows are dealt, in a seeded random order, into `segments` disjoint pools of equal size
    (``n_class // segments``; the remainder is never used). Segment k's pool splits into a training part and
    a held-out part, the last ``round(holdout * pool)`` rows. The schedule holds the training parts, or with
    `heldout` the held-out parts; the pools depend only on `labels`, `segments`, `holdout` and `seed`, so the
    two schedules of one seed never share a row. `limit_per_class` keeps a seeded random subset of that many
    rows per class and segment. Order within a segment and `blurry` are as in `class_incremental_schedule`.
    Items have source 0 and `index` = row in `labels`. Raises ValueError for invalid arguments.
    """
    label_array = _checked_labels(labels)
    _check_schedule_arguments(1, blurry, limit_per_class)
    if segments < 1 or not 0.0 < holdout < 1.0:
        raise ValueError(f"need segments >= 1 and holdout in (0, 1), got segments={segments} holdout={holdout}")
    rng = np.random.default_rng(seed)
    parts = [_domain_pools(label_array, c, segments, holdout, heldout, rng) for c in np.unique(label_array)]
    segment_rows = [rng.permutation(np.concatenate([pools[k][:limit_per_class] for pools in parts]))
                    for k in range(segments)]
    rows, owners = _blurred_order(segment_rows, blurry, rng)
    return [
        StreamItem(index=int(row), label=int(label_array[row]), segment=int(segment), position=position)
        for position, (row, segment) in enumerate(zip(rows, owners, strict=True))
    ]


def _domain_pools(
    labels: np.ndarray, label: int, segments: int, holdout: float, heldout: bool, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per segment, the training (or `heldout`) part of class `label`'s pool, in seeded random order."""
    rows = rng.permutation(np.flatnonzero(labels == label))
    size = len(rows) // segments
    held = round(holdout * size)
    if held < 1 or held >= size:
        raise ValueError(f"class {label}: {len(rows)} rows in {segments} pools of {size} leave no training or "
                         f"no held-out row at holdout={holdout}")
    pools = [rows[k * size : (k + 1) * size] for k in range(segments)]
    return [pool[size - held :] if heldout else pool[: size - held] for pool in pools]


def _checked_labels(labels: np.ndarray | Sequence[int]) -> np.ndarray:
    label_array = np.asarray(labels)
    if label_array.ndim != 1 or label_array.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {label_array.shape}")
    if not np.issubdtype(label_array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {label_array.dtype}")
    if label_array.min() < 0:
        raise ValueError(f"labels must be >= 0, found {label_array.min()}")
    return label_array


def _check_schedule_arguments(classes_per_segment: int, blurry: float, limit_per_class: int | None) -> None:
    if isinstance(classes_per_segment, bool) or not isinstance(classes_per_segment, int | np.integer):
        raise ValueError(f"classes_per_segment must be an int, got {classes_per_segment!r}")
    if classes_per_segment < 1:
        raise ValueError(f"classes_per_segment must be >= 1, got {classes_per_segment}")
    if not 0.0 <= blurry < MAX_BLURRY:
        raise ValueError(f"blurry must lie in [0, {MAX_BLURRY}), got {blurry}")
    if limit_per_class is not None and limit_per_class < 1:
        raise ValueError(f"limit_per_class must be >= 1 or None, got {limit_per_class}")


def _ordered_classes(
    labels: np.ndarray, class_order: Sequence[int] | None, shuffle_classes: bool, rng: np.random.Generator
) -> list[int]:
    """The classes present in `labels`, in the order segments introduce them."""
    present = [int(c) for c in np.unique(labels)]
    if class_order is None:
        return [int(c) for c in rng.permutation(present)] if shuffle_classes else present
    if shuffle_classes:
        raise ValueError("give either class_order or shuffle_classes=True, not both")
    order = [int(c) for c in class_order]
    if len(set(order)) != len(order):
        raise ValueError(f"class_order repeats a class: {order}")
    if set(order) != set(present):
        missing, extra = sorted(set(present) - set(order)), sorted(set(order) - set(present))
        raise ValueError(f"class_order must list exactly the classes present; missing {missing}, "
                         f"not present in labels {extra}")
    return order


def _segment_rows(
    labels: np.ndarray, classes: list[int], limit: int | None, rng: np.random.Generator
) -> np.ndarray:
    """The rows of a segment holding `classes`, in seeded random order."""
    return rng.permutation(np.concatenate([_class_rows(labels, c, limit, rng) for c in classes]))


def _class_rows(labels: np.ndarray, label: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """Rows of class `label`, or a seeded random `limit` of them (in row order)."""
    rows = np.flatnonzero(labels == label)
    if limit is None or limit >= len(rows):
        return rows
    return np.sort(rng.choice(rows, size=limit, replace=False))


def _blurred_order(
    segment_rows: list[np.ndarray], blurry: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, segment of each row) in stream order, each boundary window merged as a ramp.

    Windows never overlap: with blurry < 0.5 a segment's head and tail together hold at most all its rows.
    """
    rows = np.concatenate(segment_rows)
    segments = np.concatenate([np.full(len(r), s) for s, r in enumerate(segment_rows)])
    boundary = 0
    for before, after in zip(segment_rows, segment_rows[1:], strict=False):
        boundary += len(before)
        tail, head = int(blurry * len(before)), int(blurry * len(after))
        window = slice(boundary - tail, boundary + head)
        merged = _ramp_merge(tail, head, rng)
        rows[window], segments[window] = rows[window][merged], segments[window][merged]
    return rows, segments


def _ramp_merge(tail: int, head: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(tail + head)`` merging the first `tail` items into the last `head`.

    Each part keeps its order. Tail items draw sorted keys from density 2(1-x) on [0, 1], head items from
    2x, and the window is ordered by key, so the head's share grows roughly linearly across the window.
    """
    tail_keys = np.sort(1.0 - np.sqrt(rng.random(tail)))
    head_keys = np.sort(np.sqrt(rng.random(head)))
    return np.argsort(np.concatenate([tail_keys, head_keys]), kind="stable")


def concat_schedules(
    *schedules: Sequence[StreamItem], label_offsets: Sequence[int] | None = None
) -> list[StreamItem]:
    """Chain schedules into one stream, e.g. Split-MNIST followed by Split-Fashion-MNIST.

    Part i's items get ``label + label_offsets[i]`` (``None``: labels unchanged, a shared label space) so
    that two 10-class data sets can become 20 classes with ``label_offsets=(0, 10)``. Segments and sources
    are renumbered to follow those of earlier parts (part i's source 0 becomes the number of sources before
    it), so `source` says which data set `index` refers to; positions run 0, 1, ... over the whole stream.
    """
    offsets = [0] * len(schedules) if label_offsets is None else [int(o) for o in label_offsets]
    if len(offsets) != len(schedules):
        raise ValueError(f"label_offsets has {len(offsets)} entries for {len(schedules)} schedules")
    if any(o < 0 for o in offsets):
        raise ValueError(f"label_offsets must be >= 0, got {offsets}")
    chained: list[StreamItem] = []
    segment_base = source_base = 0
    for part, label_offset in zip(schedules, offsets, strict=True):
        chained += [
            StreamItem(index=item.index, label=item.label + label_offset, segment=item.segment + segment_base,
                       position=len(chained) + i, source=item.source + source_base)
            for i, item in enumerate(part)
        ]
        segment_base += max((item.segment for item in part), default=-1) + 1
        source_base += max((item.source for item in part), default=-1) + 1
    return chained


def segment_boundaries(schedule: Sequence[StreamItem]) -> list[int]:
    """Positions where segments 1, 2, ... begin, in segment order.

    A segment's boundary is the position of the item preceded by exactly as many items as earlier segments
    hold, i.e. where the segment starts without blurring. Without blurring it is exactly where the `segment`
    field changes; with a blurry boundary it lies inside the mixed window.
    """
    segments = np.array([item.segment for item in schedule], dtype=np.int64)
    _, counts = np.unique(segments, return_counts=True)
    starts = np.cumsum(counts)[:-1]
    return [schedule[int(start)].position for start in starts]
