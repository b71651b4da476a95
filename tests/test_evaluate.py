from __future__ import annotations

import pytest

from pegp_stream.evaluation.prequential import PrequentialAccuracy, average_accuracy, backward_transfer, forgetting

MATRIX = [
    [0.9, 0.0, 0.0],
    [0.7, 0.8, 0.0],
    [0.6, 0.5, 0.9],
]


def test_accuracy_matrix_summaries_by_definition():
    assert average_accuracy(MATRIX) == pytest.approx((0.6 + 0.5 + 0.9) / 3)
    assert forgetting(MATRIX) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.5)) / 2)
    assert backward_transfer(MATRIX) == pytest.approx(((0.6 - 0.9) + (0.5 - 0.8)) / 2)
    assert forgetting([[0.5]]) == 0.0 and backward_transfer([[0.5]]) == 0.0


def test_prequential_counts_missing_predictions_as_wrong_and_round_trips():
    accuracy = PrequentialAccuracy(window=3)
    accuracy.update([None, "a", "b"], ["a", "a", "a"], segment=0)
    accuracy.update(["b", "b"], ["b", "c"], segment=1)
    assert accuracy.cumulative == pytest.approx(2 / 5)
    assert accuracy.windowed == pytest.approx(1 / 3)
    assert accuracy.segment_accuracy() == {0: pytest.approx(1 / 3), 1: 0.5}
    copy = PrequentialAccuracy()
    copy.load_state_dict(accuracy.state_dict())
    assert copy.state_dict() == accuracy.state_dict()


def test_per_segment_accuracy_keeps_only_the_most_recent_segments():
    accuracy = PrequentialAccuracy(max_segments=3)
    for segment in range(10):
        accuracy.update(["a"], ["a" if segment % 2 else "b"], segment=segment)
    assert list(accuracy.segment_accuracy()) == [7, 8, 9]
    assert accuracy.total == 10 and accuracy.correct == 5  # the totals still count every record
