"""step-bound: learn throughput over the floor no PET method can beat, in fp32 and bf16.

The floor is the bare frozen backbone (same timm model, same weights seed, no PET wrappers) doing a
forward and an input-gradient backward on the same batch: images.requires_grad_(True), cross-entropy of
the pooled feature through a fixed random linear map, .backward(); no parameter gradients. bf16 runs the
forward under torch.autocast("cpu", dtype=torch.bfloat16), as the learner does.

The learners are the shipped defaults (projection on, SGD) with non-empty bases (one segment learned and
consolidated first). Every floor and learner, in both precisions, takes one step per round, interleaved.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pegp_stream.backbone import build_backbone
from pegp_stream.config import BackboneConfig

from .common import (
    CLASSES,
    LearnerFeed,
    ModelSize,
    interleaved,
    learner_config,
    machine_line,
    median,
    model_size,
    paired_ratio,
    progress,
    pyplot,
    report,
    synthetic_batches,
    write_csv,
)

TARGET_RATIO = 0.85
TARGET_BF16_SPEEDUP = 1.6
PRECISIONS = ("fp32", "bf16")
COLUMNS = ["precision", "variant", "model", "batch", "rounds", "step_ms", "samples_per_s", "ratio_to_floor",
           "ratio_q1", "ratio_q3", "bf16_speedup", "bf16_speedup_q1", "bf16_speedup_q3", "ratio_target_met",
           "bf16_target_met", "rejected_rows"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precisions", type=lambda t: [p for p in t.split(",") if p], default=list(PRECISIONS),
                        help="comma-separated subset of fp32,bf16")


class BackboneFloor:
    """The bare frozen backbone's forward plus input-gradient backward on a batch."""

    def __init__(self, size: ModelSize, precision: str, batches: list, seed: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = build_backbone(BackboneConfig.model_validate(size.backbone))
        generator = torch.Generator().manual_seed(seed)
        self.classifier = torch.randn(CLASSES, self.model.num_features, generator=generator) * 0.02
        self.bf16 = precision == "bf16"
        self.batches = batches
        self.position = 0
        self.rejected = 0

    def step(self) -> None:
        images, labels = self.batches[self.position % len(self.batches)]
        self.position += 1
        images = images.detach().clone().requires_grad_(True)
        targets = torch.tensor(labels, dtype=torch.int64)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            pooled = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        F.cross_entropy(pooled.float() @ self.classifier.T, targets).backward()


def run(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    size = model_size(args.quick, args.img_size, args.batch)
    rounds = args.rounds or (2 if args.quick else 8)
    segment, batches = synthetic_batches(size, 1, seed=1), synthetic_batches(size, 4, seed=2)
    steppers: dict[tuple[str, str], Any] = {}
    for precision in args.precisions:
        steppers[precision, "floor"] = BackboneFloor(size, precision, batches, args.seed)
        for kind in args.paradigms:
            config = learner_config(size, kind, precision=precision, seed=args.seed)
            steppers[precision, kind] = LearnerFeed.prepared(config, segment, batches)
    progress(f"{len(steppers)} variants prepared; timing")
    times = interleaved({f"{p} {v}": s.step for (p, v), s in steppers.items()}, rounds, warmup=1)
    rows = [_row(p, v, s, times, size, rounds) for (p, v), s in steppers.items()]
    header = [f"model: {size.describe()}; random-init weights, synthetic N(0,1) images",
              "floor = bare frozen backbone forward + input-gradient backward (no PET, no parameter grads); "
              "learners: projection on, SGD, bases non-empty",
              machine_line(),
              f"{rounds} interleaved rounds; ratios are medians of per-round pairs; targets: learn/floor >= "
              f"{TARGET_RATIO}, bf16 learn >= {TARGET_BF16_SPEEDUP}x fp32 learn"]
    shown = ["precision", "variant", "step_ms", "samples_per_s", "ratio_to_floor", "ratio_q1", "ratio_q3",
             "ratio_target_met", "bf16_speedup", "bf16_target_met"]
    print(report("step-bound: learn throughput over the frozen-backbone floor", header, rows, shown))
    write_csv(out / "step_bound.csv", rows, COLUMNS)
    _plot(rows, out / "step_bound.png", size.describe())
    return rows


def _row(precision: str, variant: str, stepper: Any, times: dict, size: ModelSize, rounds: int) -> dict[str, Any]:
    mine, floor = times[f"{precision} {variant}"], times[f"{precision} floor"]
    ratio, q1, q3 = paired_ratio(floor, mine)  # floor time / learn time = learn throughput / floor throughput
    row = {"precision": precision, "variant": variant, "model": size.describe(), "batch": size.batch,
           "rounds": rounds, "step_ms": median(mine) * 1e3, "samples_per_s": size.batch / median(mine),
           "ratio_to_floor": ratio, "ratio_q1": q1, "ratio_q3": q3, "rejected_rows": stepper.rejected,
           "ratio_target_met": "-" if variant == "floor" else _yes(ratio >= TARGET_RATIO)}
    fp32 = times.get(f"fp32 {variant}")
    if precision == "bf16" and fp32 is not None:
        speedup, s1, s3 = paired_ratio(fp32, mine)
        row.update(bf16_speedup=speedup, bf16_speedup_q1=s1, bf16_speedup_q3=s3,
                   bf16_target_met="-" if variant == "floor" else _yes(speedup >= TARGET_BF16_SPEEDUP))
    return row


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _plot(rows: list[dict[str, Any]], path: Path, model: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    precisions = list(dict.fromkeys(row["precision"] for row in rows))
    kinds = [v for v in dict.fromkeys(row["variant"] for row in rows) if v != "floor"]
    by_key = {(row["precision"], row["variant"]): row for row in rows}
    width = 0.8 / len(precisions)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, precision in enumerate(precisions):
        xs = [j + (i - (len(precisions) - 1) / 2) * width for j in range(len(kinds))]
        values = [by_key[precision, k]["ratio_to_floor"] for k in kinds]
        low = [v - by_key[precision, k]["ratio_q1"] for k, v in zip(kinds, values, strict=True)]
        high = [by_key[precision, k]["ratio_q3"] - v for k, v in zip(kinds, values, strict=True)]
        ax.bar(xs, values, width, yerr=[low, high], capsize=3, label=precision)
    ax.axhline(TARGET_RATIO, color="red", linestyle="--", label=f"target {TARGET_RATIO}")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("learn throughput / floor throughput (median, IQR)")
    ax.set_title(f"learn step vs frozen-backbone floor\n{model}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
