"""Tests for pegp_stream.data.schedule: class-incremental schedules, blurry boundaries, concatenation."""

from __future__ import annotations

import doctest
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pegp_stream.data import schedule as schedule_module
from pegp_stream.data.schedule import (
    StreamItem,
    class_incremental_schedule,
    concat_schedules,
    segment_boundaries,
)

# 10 classes of unequal size (20..29 samples), rows interleaved so that class order != row order.
LABELS = np.concatenate([np.full(20 + c, c) for c in range(10)])[np.random.default_rng(7).permutation(245)]


def _segments(schedule: list[StreamItem]) -> list[int]:
    return [item.segment for item in schedule]


def _classes_by_segment(schedule: list[StreamItem]) -> dict[int, set[int]]:
    classes: dict[int, set[int]] = {}
    for item in schedule:
        classes.setdefault(item.segment, set()).add(item.label)
    return classes


def test_docstring_examples_run():
    assert doctest.testmod(schedule_module).failed == 0


def test_every_index_exactly_once_in_position_order():
    schedule = class_incremental_schedule(LABELS, classes_per_segment=2)
    assert sorted(item.index for item in schedule) == list(range(len(LABELS)))
    assert [item.position for item in schedule] == list(range(len(LABELS)))
    assert all(LABELS[item.index] == item.label and item.source == 0 for item in schedule)


def test_segments_hold_exactly_their_classes_in_order():
    schedule = class_incremental_schedule(LABELS, classes_per_segment=3)
    assert _classes_by_segment(schedule) == {0: {0, 1, 2}, 1: {3, 4, 5}, 2: {6, 7, 8}, 3: {9}}
    assert _segments(schedule) == sorted(_segments(schedule))
    assert segment_boundaries(schedule) == [20 + 21 + 22, 20 + 21 + 22 + 23 + 24 + 25, 245 - 29]


def test_class_order_and_seeded_class_shuffle():
    order = [9, 0, 8, 1, 7, 2, 6, 3, 5, 4]
    schedule = class_incremental_schedule(LABELS, 2, class_order=order)
    assert _classes_by_segment(schedule) == {s: set(order[2 * s:2 * s + 2]) for s in range(5)}
    shuffled = class_incremental_schedule(LABELS, 1, shuffle_classes=True, seed=3)
    introduced = [shuffled[b].label for b in [0, *segment_boundaries(shuffled)]]
    assert sorted(introduced) == list(range(10)) and introduced != list(range(10))
    assert shuffled == class_incremental_schedule(LABELS, 1, shuffle_classes=True, seed=3)


def test_seeded_determinism_and_seed_sensitivity():
    first = class_incremental_schedule(LABELS, 2, seed=5, blurry=0.2)
    assert first == class_incremental_schedule(LABELS, 2, seed=5, blurry=0.2)
    assert first != class_incremental_schedule(LABELS, 2, seed=6, blurry=0.2)


def test_limit_per_class_keeps_a_seeded_subset():
    schedule = class_incremental_schedule(LABELS, 5, limit_per_class=4, seed=1)
    assert Counter(item.label for item in schedule) == dict.fromkeys(range(10), 4)
    assert len({item.index for item in schedule}) == 40
    assert schedule == class_incremental_schedule(LABELS, 5, limit_per_class=4, seed=1)


def test_blurry_moves_only_the_stated_fraction_at_each_boundary():
    blurry = 0.3
    sharp = class_incremental_schedule(LABELS, 2, seed=2)
    soft = class_incremental_schedule(LABELS, 2, seed=2, blurry=blurry)
    sizes = Counter(_segments(sharp))
    starts = segment_boundaries(sharp)
    assert segment_boundaries(soft) == starts
    allowed = set()
    for k, start in enumerate(starts):
        tail, head = int(blurry * sizes[k]), int(blurry * sizes[k + 1])
        assert tail > 0 and head > 0
        window = range(start - tail, start + head)
        allowed.update(window)
        assert {soft[p].segment for p in window} == {k, k + 1}
        assert sorted(soft[p].index for p in window) == sorted(sharp[p].index for p in window)
        assert _segments(soft)[window.start:window.stop] != _segments(sharp)[window.start:window.stop]
    moved = {p for p in range(len(sharp)) if soft[p] != sharp[p]}
    assert moved <= allowed  # nothing outside the boundary windows moves


def test_blurry_keeps_order_within_each_segment():
    sharp = class_incremental_schedule(LABELS, 5, seed=4)
    soft = class_incremental_schedule(LABELS, 5, seed=4, blurry=0.45)
    for segment in (0, 1):
        assert [i.index for i in soft if i.segment == segment] == [i.index for i in sharp if i.segment == segment]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes_per_segment": 0}, "classes_per_segment must be >= 1"),
        ({"classes_per_segment": 11}, "exceeds the 10 classes"),
        ({"classes_per_segment": 2, "blurry": 0.5}, r"blurry must lie in \[0, 0.5\)"),
        ({"classes_per_segment": 2, "limit_per_class": 0}, "limit_per_class must be >= 1"),
        ({"classes_per_segment": 2, "class_order": [0, 1, 2]}, r"missing \[3, 4, 5, 6, 7, 8, 9\]"),
        ({"classes_per_segment": 2, "class_order": [*range(10), 10]}, r"not present in labels \[10\]"),
        ({"classes_per_segment": 2, "class_order": [0, 0, *range(1, 10)]}, "repeats a class"),
        ({"classes_per_segment": 2, "class_order": range(10), "shuffle_classes": True}, "not both"),
    ],
)
def test_invalid_arguments_fail_with_precise_messages(kwargs, message):
    with pytest.raises(ValueError, match=message):
        class_incremental_schedule(LABELS, **kwargs)


@pytest.mark.parametrize(
    ("labels", "message"),
    [([], "non-empty 1-D"), ([[0, 1]], "non-empty 1-D"), ([0.0, 1.0], "integers"), ([0, -1], ">= 0")],
)
def test_invalid_labels_fail(labels, message):
    with pytest.raises(ValueError, match=message):
        class_incremental_schedule(np.array(labels), 1)


def test_stream_item_rejects_negative_fields():
    with pytest.raises(ValueError, match="StreamItem.position must be >= 0"):
        StreamItem(index=0, label=0, segment=0, position=-1)


def test_concat_renumbers_segments_positions_sources_and_offsets_labels():
    mnist_like = class_incremental_schedule(np.repeat(np.arange(10), 3), 2)
    fashion_like = class_incremental_schedule(np.repeat(np.arange(10), 2), 5)
    stream = concat_schedules(mnist_like, fashion_like, label_offsets=(0, 10))
    assert [item.position for item in stream] == list(range(50))
    assert [item.source for item in stream] == [0] * 30 + [1] * 20
    assert _segments(stream) == _segments(mnist_like) + [s + 5 for s in _segments(fashion_like)]
    assert {item.label for item in stream} == set(range(20))
    assert [item.index for item in stream[30:]] == [item.index for item in fashion_like]
    assert segment_boundaries(stream) == [6, 12, 18, 24, 30, 40]


def test_concat_defaults_to_a_shared_label_space_and_nests():
    a, b, c = (class_incremental_schedule(np.array([0, 1, 0, 1]), 1, seed=s) for s in range(3))
    shared = concat_schedules(a, b)
    assert {item.label for item in shared} == {0, 1}
    assert concat_schedules(concat_schedules(a, b), c) == concat_schedules(a, b, c)
    assert [item.source for item in shared] == [0] * 4 + [1] * 4
    assert concat_schedules(a, [], b) == shared  # an empty part adds no segment and no source


def test_concat_validates_offsets():
    part = class_incremental_schedule(np.array([0, 1]), 1)
    with pytest.raises(ValueError, match="label_offsets has 1 entries for 2 schedules"):
        concat_schedules(part, part, label_offsets=[0])
    with pytest.raises(ValueError, match="label_offsets must be >= 0"):
        concat_schedules(part, label_offsets=[-1])


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 6), min_size=1, max_size=60),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
    blurry=st.floats(0.0, 0.49),
    shuffle_classes=st.booleans(),
)
def test_schedule_invariants(labels, data, seed, blurry, shuffle_classes):
    label_array = np.array(labels)
    num_classes = len(set(labels))
    per_segment = data.draw(st.integers(1, num_classes), label="classes_per_segment")
    schedule = class_incremental_schedule(label_array, per_segment, seed=seed, blurry=blurry,
                                          shuffle_classes=shuffle_classes)
    assert sorted(item.index for item in schedule) == list(range(len(labels)))
    assert [item.position for item in schedule] == list(range(len(labels)))
    classes = _classes_by_segment(schedule)
    assert sorted(classes) == list(range(-(-num_classes // per_segment)))
    assert all(len(c) == per_segment for s, c in classes.items() if s < len(classes) - 1)
    assert set().union(*classes.values()) == set(labels) and sum(map(len, classes.values())) == num_classes
    segments = _segments(schedule)
    # Blurring only mixes neighbours: no item is ever followed by one two or more segments earlier.
    assert all(later >= max(segments[: p + 1]) - 1 for p, later in enumerate(segments))
    sizes = Counter(segments)
    for k, boundary in enumerate(segment_boundaries(schedule)):
        late = sum(1 for s in segments[boundary:] if s == k)  # segment k items after its nominal end
        early = sum(1 for s in segments[:boundary] if s == k + 1)  # segment k+1 items before its start
        assert late == early <= min(int(blurry * sizes[k]), int(blurry * sizes[k + 1]))
    assert schedule == class_incremental_schedule(label_array, per_segment, seed=seed, blurry=blurry,
                                                   shuffle_classes=shuffle_classes)
