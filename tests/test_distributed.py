"""Data-parallel learning (docs/method.md section 9): two ranks over torch.distributed (gloo, CPU), each fed its
share of every global batch, end with the model one rank fed the whole global batches ends with.

The two ranks are real processes (torch.multiprocessing, spawn) that join a process group the way torchrun's
processes do (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); they run every case below once and save what they
learned; the one-rank reference runs in the test process.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import digits_segment, tiny_config

from pegp_stream import create_learner
from pegp_stream.distributed import TorchCollective
from pegp_stream.errors import RankDivergenceError
from pegp_stream.kafka.broker import free_port

RANKS = 2
BATCH = 8
SEGMENTS = ((0, 1, 2), (3, 4, 5), (6, 7))  # digit classes; a boundary after each segment
BATCHES_PER_SEGMENT = 3
EVEN = (4,)  # rank 0's rows of each global batch (cycled); rank 1 takes the rest
UNEVEN = (4, 5, 3, 6, 2)
EMPTY = (4, 8, 0, 5)  # rank 1, then rank 0, has no rows in a step
CASES = {  # name -> (learner config, rank 0's share per step)
    "prompt-slda": (tiny_config("prompt", head={"kind": "slda"}), UNEVEN),  # sdc and the ncm trainer (defaults)
    "lora-linear": (tiny_config("lora"), EVEN),  # a protected linear head, SGD with momentum
    "adapter-ridge-adam": (tiny_config("adapter", head={"kind": "ridge"}, optimizer={"name": "adam"}), UNEVEN),
    "prefix-ncm-subsampled": (tiny_config("prefix", head={"kind": "ncm"}, projection={"max_tokens_per_sample": 9}),
                              UNEVEN),
    "lora-slda-empty-shares": (tiny_config("lora", head={"kind": "slda"}), EMPTY),
}
TAMPERED = "prompt-slda-tampered-basis"
# How far the ranks may end from the one-rank run, as max |rank - one rank| / max |one rank| per learned tensor
# (and relative, for the lr factors and losses). The ranks run the same float32 forward on fewer rows and sum
# float32 gradients and covariance blocks in another grouping: a few float32 roundings (~1e-7 relative) per step.
# Two places amplify them: (1) the lr factor (method.md section 1) divides by a central difference over a step
# that moves the features by 1e-3 of their norm, so forward rounding reaches it ~1e3-fold, ~1e-4 at worst, and
# every PET step of the segment scales with it; (2) a basis direction moves by |dC| / gap, and the energy cut
# at eps = 0.999 falls where neighbouring eigenvalues are ~1e-5 of ||C|| apart (measured on these streams).
# Measured: lr factors <= 3e-5, PET and head tensors <= 4e-6, projectors M M^T <= 8e-5 (printed by the test).
# 1e-3 leaves a 10x margin over the worst case of (1) and is 10x below what one row less does (a bug that
# drops or repeats a row: test_the_tolerance_tells_a_stream_with_one_row_less_apart, ~1e-2).
TOLERANCE = 1e-3


def learn_stream(learner, share: tuple[int, ...], rank: int | None, tamper: bool = False,
                 leave_out: int | None = None) -> dict:
    """Learn the digits stream: every global batch of BATCH rows, split at the step's `share` (rank 0 takes the
    first rows, rank 1 the rest; `rank` None: the whole batch, the one-rank reference), a boundary after each
    segment. Returns the learned state, the predictions and loss of every step, the lr factor of every segment
    and the step and basis ranks of every boundary. `leave_out`: a step whose last row one rank leaves out."""
    predictions, losses, factors, boundaries, step = [], [], [], [], 0
    for number, classes in enumerate(SEGMENTS):
        images, labels = digits_segment(classes, BATCH * BATCHES_PER_SEGMENT)
        for start in range(0, len(labels), BATCH):
            cut = start + share[step % len(share)]
            stop = start + BATCH - (step == leave_out)
            rows = {None: slice(start, stop), 0: slice(start, cut), 1: slice(cut, stop)}[rank]
            out = learner.learn_many(images[rows], labels[rows])
            predictions.append(out.predictions)
            losses.append(out.loss)
            step += 1
        if tamper and number == 1 and rank == 1:
            with torch.no_grad():
                learner.spaces[0].basis[0, 0, 0] += 1e-12  # a rounding-sized change of one entry
        factors.append(learner.lr_factor)
        boundaries.append((step, learner.consolidate()))
    return {"state": learner.state_dict(), "predictions": predictions, "losses": losses, "factors": factors,
            "boundaries": boundaries}


def _rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(RANKS))
    torch.set_num_threads(1)
    collective = TorchCollective.from_environment(torch.device("cpu"), timeout=timedelta(seconds=300))
    try:
        for name, (config, share) in CASES.items():
            torch.save(learn_stream(create_learner(config, collective), share, rank), Path(out) / f"{name}-{rank}.pt")
        config, share = CASES["prompt-slda"]
        try:
            learn_stream(create_learner(config, collective), share, rank, tamper=True)
            error = None
        except RankDivergenceError as exc:
            error = str(exc)
        torch.save({"error": error}, Path(out) / f"{TAMPERED}-{rank}.pt")
    finally:
        collective.close()


@pytest.fixture(scope="module")
def ranks_learned(tmp_path_factory) -> Path:
    """Run both ranks over every case; the directory of their results."""
    out = tmp_path_factory.mktemp("ranks")
    spawn_ranks(_rank_main, out)
    return out


def spawn_ranks(main, out: Path, ranks: int = RANKS) -> None:
    """Run `main(rank, port, out)` in `ranks` spawned processes joined over a free port; fail if they hang."""
    context = mp.start_processes(main, args=(free_port(), str(out)), nprocs=ranks, join=False, start_method="spawn")
    deadline = time.monotonic() + 900  # generous: two processes on a loaded 2-core machine; a hang fails, not waits
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not finish in 900 s")


def _rank_results(out: Path, name: str) -> list[dict]:
    return [torch.load(out / f"{name}-{rank}.pt", weights_only=False) for rank in range(RANKS)]


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    """The learned tensors of a learner state, by path: PET, head, trainer head, bases (as their projectors:
    a basis is defined up to the signs and rotation of its columns, what it protects is M M^T)."""
    found = {f"pet.{k}": v for k, v in state["pet"].items()}
    found |= {f"head.{k}": v for k, v in state["head"].items()}
    found |= {f"trainer.{k}": v for k, v in state["trainer"].items()}
    for name, space in state["spaces"].items():
        found[f"projector.{name}"] = space["basis"] @ space["basis"].transpose(1, 2)
    return found


def _differences(reference: dict, other: dict) -> dict[str, float]:
    """max |other - reference| / max |reference| for every learned tensor of two learner states."""
    ours, theirs = _tensors(reference), _tensors(other)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    return {key: ((theirs[key].double() - ours[key].double()).abs().max() / ours[key].double().abs().max()
                  .clamp(min=1e-30)).item() for key in ours}


@pytest.mark.parametrize("name", [name for name in CASES if "empty" not in name])
def test_two_ranks_fed_shares_of_each_batch_learn_what_one_rank_learns_from_the_whole_batch(name, ranks_learned):
    config, share = CASES[name]
    reference = learn_stream(create_learner(config), share, rank=None)
    _assert_equivalent(reference, _rank_results(ranks_learned, name))


def test_a_rank_with_an_empty_micro_batch_takes_the_same_step_as_the_others(ranks_learned):
    """Rank 1 has no rows in one step and rank 0 none in another: each still takes the step the other's rows
    give, and both end as one rank fed the whole batches."""
    config, share = CASES["lora-slda-empty-shares"]
    assert 0 in share and BATCH in share
    reference = learn_stream(create_learner(config), share, rank=None)
    _assert_equivalent(reference, _rank_results(ranks_learned, "lora-slda-empty-shares"))


def test_the_tolerance_tells_a_stream_with_one_row_less_apart():
    """The control for TOLERANCE: one row of 72 left out of one step of the one-rank run moves the learned
    tensors well past it."""
    config, share = CASES["lora-linear"]
    reference = learn_stream(create_learner(config), share, rank=None)
    fewer = learn_stream(create_learner(config), share, rank=None, leave_out=4)
    assert max(_differences(reference["state"], fewer["state"]).values()) > 5 * TOLERANCE


def test_a_rank_whose_basis_differs_stops_every_rank_with_a_clear_error(ranks_learned):
    errors = [result["error"] for result in _rank_results(ranks_learned, TAMPERED)]
    for error in errors:
        assert error is not None and "protected bases differ between ranks: rank(s) [1]" in error


def _assert_equivalent(reference: dict, ranks: list[dict]) -> None:
    for rank in ranks[1:]:  # the ranks hold one model, bitwise: they applied the same reduced steps
        assert all(torch.equal(a, b) for a, b in zip(_tensors(rank["state"]).values(),
                                                     _tensors(ranks[0]["state"]).values(), strict=True))
    differences = _differences(reference["state"], ranks[0]["state"])
    worst = max(differences, key=differences.get)
    print(f"largest difference from one rank: {differences[worst]:.1e} ({worst})")
    assert differences[worst] <= TOLERANCE, sorted(differences.items(), key=lambda item: -item[1])[:5]
    for rank in ranks:
        assert rank["boundaries"] == reference["boundaries"]  # same steps, same basis ranks
        assert rank["state"]["classes"] == reference["state"]["classes"]
        assert rank["state"]["counters"] == reference["state"]["counters"]
        assert rank["factors"] == pytest.approx(reference["factors"], rel=TOLERANCE)  # each segment's lr
        assert rank["losses"] == pytest.approx(reference["losses"], rel=TOLERANCE)
    joined = [p0 + p1 for p0, p1 in zip(ranks[0]["predictions"], ranks[1]["predictions"], strict=True)]
    assert joined == reference["predictions"]  # each row predicted as the one rank predicted it
