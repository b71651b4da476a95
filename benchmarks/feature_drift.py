"""feature-drift: how well a boundary keeps old features where they were, and how stale the head's stored class
means become while the next segment is learned (issue 10).

    python -m benchmarks.evidence feature-drift [--variant NAME:KEY=VALUE,...] [--set KEY=VALUE] [--steps N]

The stream is S1's first two segments (MNIST 0/1, then 2/3; --quick: digits). Each variant (a name and the
EvalConfig overrides that make it, on top of the shipped defaults, LoRA and `--set`) learns segment 0 whole,
consolidates, and learns segment 1; at the boundary and every `--every` steps of segment 1 it reports, on
segment 0's held-out images (the same images each time):
- acc_old, acc_new: the learner's accuracy on segment 0's and segment 1's held-out data;
- probe_old: a readout refit on the current features of both segments' held-out data (`probe_accuracies`): what
  the features still hold;
- drift_old: mean over the images of |f_now - f_boundary| / |f_boundary|, f the pooled feature;
- mean_moved: mean over segment 0's classes of how far their held-out feature mean moved since the boundary;
- tracking_error: mean over those classes of |stored move - true move|, the stored move being how far the
  head's stored mean moved (drift compensation) and the true move `mean_moved`'s vector: the staleness
  the learning of segment 1 adds (sampling noise of the held-out mean cancels, the images are the same);
- between: the distance between the two classes' held-out means, for scale.
mean_moved and tracking_error are empty for heads without class means (linear, ridge).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from .common import format_table, progress, write_csv

COLUMNS = ["variant", "steps", "acc_old", "acc_new", "probe_old", "drift_old", "mean_moved", "tracking_error",
           "between"]
DEFAULT_VARIANTS = ("frozen:learner.pet.kind=none", "shipped:")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """"name:key=value,key=value" -> (name, ["key=value", ...])."""
    name, _, overrides = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected NAME:KEY=VALUE,...")
    return name, [o for o in overrides.split(",") if o]


def run(args: argparse.Namespace, backbone: Path | None) -> int:
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    rows: list[dict[str, Any]] = []
    for name, overrides in variants:
        started = time.perf_counter()
        rows += measure(name, [*args.overrides, *overrides], args, backbone)
        progress(f"{name}: {time.perf_counter() - started:.0f} s")
    print(format_table(rows, COLUMNS))
    path = write_csv(args.out / "feature_drift.csv", rows, COLUMNS)
    print(f"wrote {path}")
    return 0


def measure(name: str, overrides: list[str], args: argparse.Namespace, backbone: Path | None) -> list[dict]:
    from pegp_stream.config import EvalConfig, merge_tree, parse_overrides, to_config
    from pegp_stream.core.learner import create_learner
    from pegp_stream.data.streams import build_stream, build_test_stream
    from pegp_stream.evaluation.run import accuracy, held_out_sets, probe_accuracies
    from pegp_stream.inputs.decode import canonical_label

    from .evidence import learner, stream

    seed = int(args.seeds.split(",")[0])
    config = {"name": name, "learner": learner("lora", True, "slda", seed, args.quick, backbone),
              "stream": stream("s1", seed, args.quick, args.limit_per_class)}
    config = to_config(EvalConfig, merge_tree(config, parse_overrides(overrides)))
    model = create_learner(config.learner)
    tests = held_out_sets(build_test_stream(config.stream, args.test_limit_per_class), model,
                          config.eval_batch_size)[:2]
    old_images, old_labels = tests[0]
    rows: list[dict] = []
    boundary: dict[str, torch.Tensor] = {}

    def features() -> torch.Tensor:
        return torch.cat([model.features(images) for images in old_images]).double()

    def report(steps: int) -> None:
        now = features()
        row: dict[str, Any] = {"variant": name, "steps": steps, "acc_old": accuracy(model, *tests[0]),
                               "acc_new": accuracy(model, *tests[1]) if steps else None,
                               "probe_old": probe_accuracies(model, tests)[0]}
        classes = torch.tensor([model.classes.index(canonical_label(label)) for label in old_labels])
        true_means = torch.stack([now[classes == k].mean(0) for k in (0, 1)])
        stored = getattr(model.head, "means", None)
        stored = stored[:2].double().clone() if stored is not None else None
        if not boundary:
            boundary.update(features=now, true=true_means, **({"stored": stored} if stored is not None else {}))
        start = boundary["features"]
        row["drift_old"] = ((now - start).norm(dim=1) / start.norm(dim=1)).mean().item()
        row["between"] = (true_means[0] - true_means[1]).norm().item()
        if stored is not None:
            true_move = true_means - boundary["true"]
            row["mean_moved"] = true_move.norm(dim=1).mean().item()
            row["tracking_error"] = ((stored - boundary["stored"]) - true_move).norm(dim=1).mean().item()
        rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})

    segment, steps = 0, 0
    for batch in build_stream(config.stream).batches(config.batch_size, config.stream.markers):
        if batch[0].segment != segment:
            if batch[0].segment > 1:
                break
            report(0)
            model.consolidate()
            segment = 1
        model.learn_many(model.prepare([r.image for r in batch]), [r.label for r in batch])
        steps += segment
        if segment and steps % args.every == 0:
            report(steps)
            if args.steps and steps >= args.steps:
                break
    if rows[-1]["steps"] != steps:
        report(steps)
    return rows
