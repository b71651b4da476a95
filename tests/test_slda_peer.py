"""Our streaming LDA head against a third-party implementation: avalanche-lib's StreamingLDA (issue 10, "our
slda agrees with avalanche's StreamingLDA"), on scikit-learn's real digits as a class-incremental stream.

avalanche-lib is in the `bench` extra (deploy/bootstrap.sh installs it, so CI runs these); without it the
tests skip."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pegp_stream.config import HeadConfig
from pegp_stream.core.heads import StreamingLDAHead

pytest.importorskip("avalanche.training", reason="avalanche-lib is not installed (the `bench` extra)")

from benchmarks import evidence  # noqa: E402
from benchmarks.slda_peer import avalanche_slda, fit_per_class  # noqa: E402

SHRINKAGE = HeadConfig.model_fields["slda_shrinkage"].default
CLASSES = 10
SEGMENTS = 5  # two digits each


@pytest.fixture(scope="module")
def digits() -> dict[str, torch.Tensor]:
    """Digits (64 pixel features), seeded split: 4/5 for training in class-incremental order (digits 0-1,
    then 2-3, ...), 1/5 held out."""
    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = torch.tensor(x[perm], dtype=torch.float32), torch.tensor(y[perm])
    held_out = torch.arange(len(y)) % 5 == 0
    order = torch.argsort(y[~held_out] // 2, stable=True)
    return {"x": x[~held_out][order], "y": y[~held_out][order], "test_x": x[held_out], "test_y": y[held_out]}


def ours_on(digits: dict[str, torch.Tensor]) -> StreamingLDAHead:
    head = StreamingLDAHead(CLASSES, digits["x"].shape[1], SHRINKAGE)
    for start in range(0, len(digits["y"]), 16):
        head.observe(digits["x"][start : start + 16], digits["y"][start : start + 16])
    return head


def avalanche_trained(digits: dict[str, torch.Tensor]):
    """avalanche's StreamingLDA trained through its own `train()`, one experience per segment, in stream order
    (its data loader shuffles unless told not to, and its per-sample recursion depends on the order)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of avalanche's tensor benchmark helper
        from avalanche.benchmarks.scenarios.deprecated.generic_benchmark_creation import (
            create_generic_benchmark_from_tensor_lists,
        )

        segment = digits["y"] // 2
        benchmark = create_generic_benchmark_from_tensor_lists(
            [[digits["x"][segment == s], digits["y"][segment == s]] for s in range(SEGMENTS)],
            [[digits["test_x"], digits["test_y"]]], task_labels=[0] * SEGMENTS)
        model = avalanche_slda(digits["x"].shape[1], CLASSES, SHRINKAGE)
        for experience in benchmark.train_stream:
            model.train(experience, shuffle=False, num_workers=0)
    return model


def test_our_slda_predicts_like_avalanches_streaming_lda(digits):
    ours, theirs = ours_on(digits), avalanche_trained(digits)
    assert theirs.num_updates == len(digits["y"])
    mine = ours(digits["test_x"], CLASSES).argmax(1)
    peer = theirs.predict(digits["test_x"]).argmax(1)
    agreement = (mine == peer).float().mean().item()
    assert agreement >= 0.99, f"identical predictions on {agreement:.4f} of {len(mine)} held-out digits"
    accuracy = (mine == digits["test_y"]).float().mean().item()
    assert accuracy > 0.9  # both are real classifiers here, not agreeing on noise


def test_the_remaining_gap_is_avalanches_recursion_weights(digits):
    """avalanche weights each sample's scatter by n / (n + 1), n the global count; with the class's count
    instead (Welford) its covariance is our exact one and every prediction agrees."""
    ours = ours_on(digits)
    fixed = avalanche_slda(digits["x"].shape[1], CLASSES, SHRINKAGE)
    for x, y in zip(digits["x"], digits["y"], strict=True):
        fit_per_class(fixed, x[None], y[None])
    covariance = ours.scatter / len(digits["y"])
    torch.testing.assert_close(fixed.Sigma.double(), covariance, rtol=1e-4, atol=1e-4 * covariance.abs().max())
    torch.testing.assert_close(fixed.muK.double(), ours.means, rtol=1e-5, atol=1e-5)
    mine = ours(digits["test_x"], CLASSES).argmax(1)
    assert torch.equal(mine, fixed.predict(digits["test_x"]).argmax(1))


def test_slda_peer_benchmark_writes_its_table(tmp_path):
    """`evidence slda-peer --quick`: tiny random ViT on digits, both streams, one row each (random-init
    features are nearly alike, so the two LDAs' agreement there says little: only the table is checked)."""
    assert evidence.main(["slda-peer", "--quick", "--seeds", "0", "--out", str(tmp_path)]) in (0, 1)
    with (tmp_path / "slda_peer.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["stream"] for row in rows] == ["S1", "S2"]
    for row in rows:
        assert all(0.0 <= float(row[column]) <= 1.0 for column in ("agree", "agree_all", "agree_fixed"))
        assert int(row["classes"]) == CLASSES and float(row["shrinkage"]) == SHRINKAGE
