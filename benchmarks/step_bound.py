"""step-bound: learn throughput over the floor no PET method can beat, in fp32 and bf16.

The floor is the bare frozen backbone (same timm model, same weights seed, no PET wrappers) doing a
forward and an input-gradient backward on the same batch: images.requires_grad_(True), cross-entropy of
the pooled feature through a fixed random linear map, .backward(); no parameter gradients. bf16 runs the
forward under torch.autocast(device, dtype=torch.bfloat16), as the learner does. With `--device cuda`
floor and learners run on the GPU and the timers synchronize the device.

The learners are the shipped defaults (projection on, SGD) with non-empty bases (one segment learned and
consolidated first). Every floor and learner, in every mode, takes one step per round, interleaved.

A mode is a precision plus timm's attention implementation: `sdpa` (timm's default, the fused
F.scaled_dot_product_attention) or `eager` (q k^T, softmax, @ v as plain matmuls). On CPU, SDPA's bf16
backward is slow, so bf16 is timed both ways; each mode's floor uses the same attention as its learners.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pegp_stream.config import BackboneConfig
from pegp_stream.core.backbone import build_backbone

from .common import (
    ATTENTION,
    CLASSES,
    LearnerFeed,
    ModelSize,
    device_name,
    interleaved,
    learner_config,
    machine_line,
    median,
    model_size,
    paired_ratio,
    progress,
    pyplot,
    report,
    set_attention,
    step_clock,
    synthetic_batches,
    write_csv,
)

TARGET_RATIO = 0.85
TARGET_BF16_SPEEDUP = 1.6
MODES = ("fp32/sdpa", "bf16/sdpa", "bf16/eager")
REFERENCE_MODE = "fp32/sdpa"
COLUMNS = ["mode", "precision", "attention", "variant", "model", "batch", "rounds", "step_ms", "samples_per_s",
           "ratio_to_floor", "ratio_q1", "ratio_q3", "speedup_vs_fp32", "speedup_q1", "speedup_q3", "ratio_target_met",
           "bf16_target_met", "rejected_rows"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modes", type=_modes, default=list(MODES),
                        help="comma-separated precision/attention pairs (default: %(default)s); "
                        f"speedups are against {REFERENCE_MODE}")


class BackboneFloor:
    """The bare frozen backbone's forward plus input-gradient backward on a batch."""

    def __init__(
        self, size: ModelSize, precision: str, attention: str, batches: list, seed: int, device: torch.device
    ) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = build_backbone(BackboneConfig.model_validate(size.backbone)).to(device)
        set_attention(self.model, attention)
        generator = torch.Generator().manual_seed(seed)
        self.classifier = (torch.randn(CLASSES, self.model.num_features, generator=generator) * 0.02).to(device)
        self.device = device
        self.bf16 = precision == "bf16"
        self.batches = batches
        self.position = 0
        self.rejected = 0

    def step(self) -> None:
        images, labels = self.batches[self.position % len(self.batches)]
        self.position += 1
        images = images.detach().clone().requires_grad_(True)
        targets = torch.tensor(labels, dtype=torch.int64, device=self.device)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            pooled = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        F.cross_entropy(pooled.float() @ self.classifier.T, targets).backward()


def run(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    size = model_size(args.quick, args.img_size, args.batch, args.model)
    rounds = args.rounds or (2 if args.quick else 8)
    segment = synthetic_batches(size, 1, seed=1, device=args.device)
    batches = synthetic_batches(size, 4, seed=2, device=args.device)
    steppers: dict[tuple[str, str], Any] = {}
    for mode in args.modes:
        precision, attention = mode.split("/")
        steppers[mode, "floor"] = BackboneFloor(size, precision, attention, batches, args.seed, args.device)
        for kind in args.paradigms:
            config = learner_config(size, kind, precision=precision, seed=args.seed, device=args.device)
            steppers[mode, kind] = LearnerFeed.prepared(config, segment, batches, attention=attention)
    progress(f"{len(steppers)} variants prepared; timing")
    times = interleaved({f"{m} {v}": s.step for (m, v), s in steppers.items()}, rounds, warmup=1,
                        clock=step_clock(args.device))
    rows = [_row(m, v, s, times, size, rounds) for (m, v), s in steppers.items()]
    header = [f"model: {size.describe()}, device {device_name(args.device)}; random-init weights, "
              "synthetic N(0,1) images",
              "floor = bare frozen backbone forward + input-gradient backward (no PET, no parameter grads), same "
              "precision and attention as the mode's learners; learners: projection on, SGD, bases non-empty",
              "attention: sdpa = timm default (fused F.scaled_dot_product_attention), eager = explicit matmuls",
              machine_line(args),
              f"{rounds} interleaved rounds; ratios are medians of per-round pairs; targets: learn/floor >= "
              f"{TARGET_RATIO}, bf16 learn >= {TARGET_BF16_SPEEDUP}x the {REFERENCE_MODE} learn"]
    shown = ["mode", "variant", "step_ms", "samples_per_s", "ratio_to_floor", "ratio_q1", "ratio_q3",
             "ratio_target_met", "speedup_vs_fp32", "bf16_target_met"]
    print(report("step-bound: learn throughput over the frozen-backbone floor", header, rows, shown))
    write_csv(out / "step_bound.csv", rows, COLUMNS)
    _plot(rows, out / "step_bound.png", size.describe())
    return rows


def _row(mode: str, variant: str, stepper: Any, times: dict, size: ModelSize, rounds: int) -> dict[str, Any]:
    mine, floor = times[f"{mode} {variant}"], times[f"{mode} floor"]
    ratio, q1, q3 = paired_ratio(floor, mine)  # floor time / learn time = learn throughput / floor throughput
    precision, attention = mode.split("/")
    row = {"mode": mode, "precision": precision, "attention": attention, "variant": variant,
           "model": size.describe(), "batch": size.batch, "rounds": rounds, "step_ms": median(mine) * 1e3,
           "samples_per_s": size.batch / median(mine), "ratio_to_floor": ratio, "ratio_q1": q1, "ratio_q3": q3,
           "rejected_rows": stepper.rejected,
           "ratio_target_met": "-" if variant == "floor" else _yes(ratio >= TARGET_RATIO)}
    reference = times.get(f"{REFERENCE_MODE} {variant}")
    if mode != REFERENCE_MODE and reference is not None:
        speedup, s1, s3 = paired_ratio(reference, mine)
        row.update(speedup_vs_fp32=speedup, speedup_q1=s1, speedup_q3=s3)
        if precision == "bf16" and variant != "floor":
            row["bf16_target_met"] = _yes(speedup >= TARGET_BF16_SPEEDUP)
    return row


def _modes(text: str) -> list[str]:
    modes = [part.strip() for part in text.split(",") if part.strip()]
    for mode in modes:
        precision, _, attention = mode.partition("/")
        if precision not in ("fp32", "bf16") or attention not in ATTENTION:
            raise argparse.ArgumentTypeError(f"mode {mode!r}: expected fp32|bf16 / {'|'.join(ATTENTION)}")
    return modes


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _plot(rows: list[dict[str, Any]], path: Path, model: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    modes = list(dict.fromkeys(row["mode"] for row in rows))
    kinds = [v for v in dict.fromkeys(row["variant"] for row in rows) if v != "floor"]
    by_key = {(row["mode"], row["variant"]): row for row in rows}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = {mode: f"C{i}" for i, mode in enumerate(modes)}
    _bars(left, modes, kinds, by_key, "ratio_to_floor", "ratio_q1", "ratio_q3", colors)
    left.axhline(TARGET_RATIO, color="red", linestyle="--", label=f"target {TARGET_RATIO}")
    left.set_ylim(0, 1.1)
    left.set_ylabel("learn throughput / floor throughput (median, IQR)")
    left.legend(fontsize=8)
    faster = [m for m in modes if m != REFERENCE_MODE]
    _bars(right, faster, ["floor", *kinds], by_key, "speedup_vs_fp32", "speedup_q1", "speedup_q3", colors)
    right.axhline(TARGET_BF16_SPEEDUP, color="red", linestyle="--", label=f"target {TARGET_BF16_SPEEDUP}x")
    right.set_ylabel(f"throughput / {REFERENCE_MODE} throughput (median, IQR)")
    right.legend(fontsize=8)
    fig.suptitle(f"learn step vs frozen-backbone floor; {model}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(
    ax: Any, modes: list[str], kinds: list[str], by_key: dict, key: str, low_key: str, high_key: str,
    colors: dict[str, str],
) -> None:
    width = 0.8 / max(len(modes), 1)
    for i, mode in enumerate(modes):
        present = [k for k in kinds if by_key.get((mode, k), {}).get(key) is not None]
        xs = [kinds.index(k) + (i - (len(modes) - 1) / 2) * width for k in present]
        values = [by_key[mode, k][key] for k in present]
        low = [v - by_key[mode, k][low_key] for k, v in zip(present, values, strict=True)]
        high = [by_key[mode, k][high_key] - v for k, v in zip(present, values, strict=True)]
        ax.bar(xs, values, width, yerr=[low, high], capsize=3, label=mode, color=colors[mode])
    ax.set_xticks(range(len(kinds)), kinds)
