"""head-cost: what the classifier head costs within a learn step, per head kind, in one interleaved run.

For every paradigm and head, two things are timed one call per round (rounds interleaved, see common.py):
- `step`: the learner's full `learn_many` step with that head (the shipped defaults otherwise: projection on,
  SGD, bases non-empty after one consolidated segment);
- `head`: the head's own work in such a step, on a copy of the learner's head and the same batches' pooled
  features: the training forward (which for slda/ridge includes the lazy solve, since the previous step's
  observe changed the statistics), the backward through the head to the features, and `observe`.
head_share is the per-round ratio head / step (median and quartiles): the fraction of the step the head takes.
The issue's target is at most 0.10. ridge-M is the ridge head with an M-wide random ReLU projection. A name
ending in +sdc turns on `head.drift_compensation: sdc` (the shipped default; the others run without it): its
extra forward is learner work, not head work, so its cost is the column step_vs_plain, the per-round ratio of
its step to the same head's step without compensation.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch

from .common import (
    CLASSES,
    LearnerFeed,
    device_name,
    interleaved,
    learner_config,
    machine_line,
    median,
    model_size,
    paired_ratio,
    progress,
    report,
    step_clock,
    synthetic_batches,
    write_csv,
)

TARGET_SHARE = 0.10
DEFAULT_HEADS = ("ncm", "slda", "slda+sdc", "ridge", "ridge-512")
COLUMNS = ["paradigm", "head", "model", "batch", "rounds", "step_ms", "head_ms", "head_share", "head_share_q1",
           "head_share_q3", "target_met", "step_vs_plain", "rejected_rows", "device"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heads", type=_heads, default=list(DEFAULT_HEADS),
                        help="comma-separated heads: ncm, slda, ridge, ridge-M (M random features); "
                        "default %(default)s")


def head_config(name: str) -> dict[str, Any]:
    """The `learner.head` section a head name stands for."""
    name, sdc, _ = name.partition("+sdc")
    kind, _, width = name.partition("-")
    return {"kind": kind, "drift_compensation": "sdc" if sdc else "none",
            **({"ridge_random_features": int(width)} if width else {})}


class HeadWork:
    """The head's share of a learn step, replayed on a copy of a prepared learner's head: forward (solving
    lazily), backward to the features, observe; the batches' pooled features are computed once up front."""

    def __init__(self, feed: LearnerFeed) -> None:
        learner = feed.learner
        self.head = copy.deepcopy(learner.head)
        self.classes = len(learner.classes)
        self.batches = []
        for images, labels in feed.batches:
            targets = torch.tensor([learner.classes.index(label) for label in labels], device=learner.device)
            self.batches.append((learner.features(images).to(learner.device), targets))
        self.position = 0

    def step(self) -> None:
        features, targets = self.batches[self.position % len(self.batches)]
        self.position += 1
        features = features.clone().requires_grad_(True)
        self.head(features, self.classes).logsumexp(dim=1).sum().backward()
        self.head.observe(features.detach(), targets)


def run(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    size = model_size(args.quick, args.img_size, args.batch, args.model)
    rounds = args.rounds or (3 if args.quick else 8)
    segment = synthetic_batches(size, -(-CLASSES // size.batch), seed=1, device=args.device)  # every class once
    batches = synthetic_batches(size, 4, seed=2, device=args.device)
    steppers: dict[tuple[str, str, str], Any] = {}
    for kind in args.paradigms:
        for head in args.heads:
            config = {**learner_config(size, kind, seed=args.seed, device=args.device), "head": head_config(head)}
            feed = LearnerFeed.prepared(config, segment, batches)
            steppers[kind, head, "step"], steppers[kind, head, "head"] = feed, HeadWork(feed)
    progress(f"{len(steppers)} variants prepared; timing")
    times = interleaved({" ".join(key): s.step for key, s in steppers.items()}, rounds, warmup=1,
                        clock=step_clock(args.device))
    rows = [_row(kind, head, steppers[kind, head, "step"], times, size, rounds, args.device)
            for kind in args.paradigms for head in args.heads]
    header = [f"model: {size.describe()}, device {device_name(args.device)}; random-init weights, synthetic "
              "N(0,1) images, labels cycling over 10 classes",
              "step: the learner's learn_many (projection on, SGD, bases non-empty) with that head; head: the "
              "head's work in a step (forward with the lazy solve, backward to the features, observe) on a copy",
              machine_line(args),
              f"{rounds} interleaved rounds; head_share = median of per-round head/step ratios; target <= "
              f"{TARGET_SHARE}"]
    for row in rows:
        plain = row["head"].partition("+sdc")[0]
        if row["head"] != plain and (row["paradigm"], plain, "step") in steppers:
            row["step_vs_plain"] = paired_ratio(times[f"{row['paradigm']} {row['head']} step"],
                                                times[f"{row['paradigm']} {plain} step"])[0]
    shown = ["paradigm", "head", "step_ms", "head_ms", "head_share", "head_share_q1", "head_share_q3", "target_met",
             "step_vs_plain"]
    print(report("head-cost: the classifier head's share of a learn step", header, rows, shown))
    write_csv(out / "head_cost.csv", rows, COLUMNS)
    return rows


def _row(kind: str, head: str, feed: LearnerFeed, times: dict, size: Any, rounds: int,
         device: torch.device) -> dict[str, Any]:
    step, work = times[f"{kind} {head} step"], times[f"{kind} {head} head"]
    share, q1, q3 = paired_ratio(work, step)
    return {"paradigm": kind, "head": head, "model": size.describe(), "batch": size.batch, "rounds": rounds,
            "step_ms": median(step) * 1e3, "head_ms": median(work) * 1e3, "head_share": share, "head_share_q1": q1,
            "head_share_q3": q3, "target_met": "yes" if share <= TARGET_SHARE else "NO", "step_vs_plain": None,
            "rejected_rows": feed.rejected, "device": device_name(device)}


def _heads(text: str) -> list[str]:
    heads = [part.strip() for part in text.split(",") if part.strip()]
    for head in heads:
        kind, _, width = head.partition("+sdc")[0].partition("-")
        if kind not in ("ncm", "slda", "ridge") or (width and (kind != "ridge" or not width.isdigit())):
            raise argparse.ArgumentTypeError(f"head {head!r}: expected ncm, slda, ridge or ridge-M, each "
                                             "optionally with +sdc")
    return heads
