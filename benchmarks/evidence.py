"""Evidence: accuracy and forgetting of every PET paradigm with and without PEGP on real streams, the
references and the head variants, each over several seeds through `pegp_stream.evaluation.run` (what
`pegp-stream eval` runs).

    python -m benchmarks.evidence run    [--suites heads,s1,s2,s3,s4,refs,frozen-heads,iid] [--seeds 0,1,2]
                                         [--workers 2] [--quick]
    python -m benchmarks.evidence report [--out DIR]
    python -m benchmarks.evidence slda-peer [--seeds 0,1,2] [--shrinkage S] [--quick]   (benchmarks/slda_peer.py)
    python -m benchmarks.evidence feature-drift [--variant NAME:KEY=VALUE,...] [--steps N] (benchmarks/feature_drift.py)

Streams (docs/method.md section 7 metrics; RESULTS.md says what was run):
- S1: Split-MNIST (5 segments of 2 digits) then Split-Fashion-MNIST (5 of 2 classes); markers on.
- S2: the same task-free: no markers, blurry boundaries (10%), boundaries from a drift detector.
- S3: domain-incremental: all 10 CIFAR-10 classes in each of 5 segments, each segment its own disjoint pool
  of CIFAR-10 *test* images (the backbone was pretrained on the train split) corrupted with one
  `imagecorruptions` type (S3_CORRUPTIONS); per class and segment 150 learned and 50 held out at most.
- S4: domain-incremental and long: S3's corruptions on Fashion-MNIST's training split (60 000 images, which the
  backbone never saw), a disjoint pool per segment, per class and segment 900 learned and 300 held out at
  full size (--limit-per-class 0): segments of 9 000 samples, 45 000 in all.
Every run's folder holds result.json, matrix.csv, curve.csv and its plots; `run` skips runs already
done (a killed grid resumes), `report` aggregates mean and spread over seeds into summary.csv / summary.md
and draws forgetting per paradigm.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import PARADIGMS, format_table, write_csv

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "out" / "evidence"
BACKBONE_FILE = ROOT / "assets" / "vit-cifar10-w128d6.safetensors"
# The backbone pretrained on CIFAR-10 by `pegp-stream pretrain` (benchmarks/assets/README.md).
BACKBONE = {"name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4, "embed_dim": 128, "depth": 6,
            "num_heads": 4}
QUICK_BACKBONE = {"name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 2,
                  "num_heads": 4}
# docs/method.md section 5: the head variants of the heads suite. The s1/s2/s3 grid uses GRID_HEAD at the shipped
# defaults otherwise (slda since issue 10; the grid's sections in RESULTS.md dated 2026-11-29 ran with ncm).
HEADS: dict[str, dict[str, Any]] = {
    "linear-protected": {"head": {"kind": "linear"}, "projection": {"protect_head": True}},
    "linear-free": {"head": {"kind": "linear"}, "projection": {"protect_head": False}},
    "linear-segment-mask": {"head": {"kind": "linear", "train_mask": "segment"}, "projection": {"protect_head": False}},
    "linear-slow": {"head": {"kind": "linear", "lr_scale": 0.01}, "projection": {"protect_head": False}},
    "ncm": {"head": {"kind": "ncm"}},
}
GRID_HEAD = "slda"
# Issue 10: the frozen-backbone references with the second-order heads (exact in one pass, no SGD), each on
# S1 to S4; run folders frozen-s1/none/<head> to frozen-s4/none/<head>. Not here:
# ridge with 2048 random features (RanPAC's form), 516 s of training per run at 150 samples per class on 2 shared
# cores (5.8 rec/s).
FROZEN_HEADS: dict[str, dict[str, Any]] = {
    "ncm": {"head": {"kind": "ncm"}},
    "slda": {"head": {"kind": "slda"}},
    "ridge": {"head": {"kind": "ridge"}},
}
# Every paradigm runs at the shipped optimizer.lr, in feature units (issue 10 item 3, docs/method.md section 1).
# Sections of RESULTS.md before that ran SGD at raw per-paradigm rates (lr_unit parameter): prompt 0.01, prefix
# 0.1, adapter 0.001, LoRA 0.001, head only 0.001 (git show 9ea4721:benchmarks/evidence.py).
# S3's segments in stream order, one corruption family each (noise, blur, weather, digital x2), at severity 3 of
# 5 (ImageNet-C's middle; the package's severities are sized for 224 px and harsher at 32). Frozen backbone
# (the committed CIFAR-10 ViT, pet none), one corruption alone, 150 learned / 50 held out per class, seed 0:
#
#   corruption        ncm sev1  ncm sev3  slda sev3      others at sev 1 / 3 (ncm)
#   gaussian_noise    0.560     0.470     0.442          shot_noise 0.538 / 0.438, speckle_noise 0.568 / 0.460
#   motion_blur       0.536     0.454     0.480          defocus_blur 0.486 / 0.416, zoom_blur 0.580 / 0.568
#   snow              0.556     0.482     0.494          frost 0.504 / 0.398, spatter 0.568 / 0.572
#   contrast          0.490     0.356     0.478          brightness 0.588 / 0.506, saturate 0.550 / 0.562
#   pixelate          0.590     0.532     0.520          jpeg_compression 0.580 / 0.556, elastic 0.542 / 0.520
#   (clean images: ncm 0.590, slda 0.592; chance 0.100)
#
# So every segment keeps the frozen model at 3.5x chance or more while moving it 6-23 points from clean. The
# whole S3 (seed 0, frozen-s3): ncm A 0.382 (contrast's segment 0.250 at the end), slda A 0.453.
S3_CORRUPTIONS = ("gaussian_noise", "motion_blur", "snow", "contrast", "pixelate")
S3_SEVERITY = 3
DETECTOR = {"kind": "page_hinkley"}  # S2: the prequential loss jumps when unseen classes arrive
JOINT_EPOCHS = 3
JOINT_LINEAR_HEAD_LR = 0.01  # the joint reference's linear head (the PET keeps its paradigm's rate)
STREAMS = ("s1", "s2", "s3", "s4")  # the evidence streams (module docstring), each a suite of its own
SUITES = ("heads", *STREAMS, "refs", "frozen-heads", "iid")
# The headroom a one-pass learner has (suite "iid"): the PET at the shipped defaults fed the stream's training
# samples once in a random order (one segment: no drift, nothing to protect), slda refit on its final features.
# Folders iid-s1/<paradigm>/iid-1ep, iid-s3/... and iid-s4/...; S2 holds S1's samples, so its reference is iid-s1's.


@dataclass(frozen=True)
class Run:
    """One configuration on one seed: `config` is an EvalConfig mapping."""

    suite: str
    paradigm: str
    variant: str
    seed: int
    config: dict = field(hash=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.paradigm}/{self.variant}"

    def folder(self, out: Path) -> Path:
        return out / self.suite / self.paradigm / self.variant / f"seed{self.seed}"


def stream(kind: str, seed: int, quick: bool, limit: int) -> dict[str, Any]:
    """The StreamConfig mapping of stream `kind` ("s1" to "s4"); --quick changes S1, S2 and S4 to digits
    (S3 stays on CIFAR-10 test images, which the backbone never saw)."""
    config: dict[str, Any] = {"limit_per_class": limit or None, "seed": seed}
    if kind in ("s3", "s4"):  # domain streams: S3's corruptions on S3's or S4's images
        # S3's pools hold 150 training rows per class and segment: a larger limit changes nothing
        source = {"datasets": ["cifar10"], "split": "test"} if kind == "s3" else {
            "datasets": ["digits" if quick else "fashion_mnist"], "split": "train"}
        return config | source | {"corruptions": list(S3_CORRUPTIONS), "severity": S3_SEVERITY}
    config |= {"datasets": ["digits"] if quick else ["mnist", "fashion_mnist"], "classes_per_segment": 2}
    if kind == "s2":
        config |= {"markers": False, "blurry": 0.1}
    return config


def learner(paradigm: str, projected: bool, head: str, seed: int, quick: bool, backbone: Path | None) -> dict:
    spec = dict(QUICK_BACKBONE if quick else BACKBONE)
    if backbone is not None:
        spec["checkpoint_path"] = str(backbone)
    from pegp_stream.config import merge_tree

    config: dict[str, Any] = {"backbone": spec, "pet": {"kind": paradigm}, "precision": "fp32", "seed": seed,
                              "projection": {"enabled": projected},
                              "optimizer": {"name": "sgd"}}
    return merge_tree(config, (HEADS | FROZEN_HEADS)[head])


def plan(suites: Sequence[str], seeds: Sequence[int], paradigms: Sequence[str], quick: bool,
         backbone: Path | None, limit: int, test_limit: int, overrides: Sequence[str] = ()) -> list[Run]:
    """Every run of the chosen suites; `overrides` ("learner.optimizer.lr=0.001") apply to every run."""
    from pegp_stream.config import OptimizerConfig, merge_tree, parse_overrides

    common = parse_overrides(overrides)
    runs: list[Run] = []

    def add(suite: str, paradigm: str, variant: str, seed: int, *, projected: bool, head: str = GRID_HEAD,
            kind: str = "s1", head_lr: float | None = None, **extra: Any) -> None:
        spec = learner(paradigm, projected, head, seed, quick, backbone)
        if head_lr is not None:  # a new tree: `spec` shares its head section with HEADS
            spec = merge_tree(spec, {"head": {"lr_scale": head_lr / OptimizerConfig().lr}})
        config = {
            "name": f"{suite}/{paradigm}/{variant}/seed{seed}",
            "learner": spec,
            "stream": stream(kind, seed, quick, limit), "test_limit_per_class": test_limit,
            "drift": {"detector": DETECTOR} if kind == "s2" else {}, **extra,
        }
        runs.append(Run(suite, paradigm, variant, seed, merge_tree(config, common)))

    for seed in seeds:
        if "frozen-heads" in suites:
            for kind in STREAMS:
                for head in FROZEN_HEADS:
                    add(f"frozen-{kind}", "none", head, seed, projected=False, head=head, kind=kind)
        if "heads" in suites:
            for head in HEADS:
                add("heads", "adapter", head, seed, projected=True, head=head)
        for suite in STREAMS:
            if suite in suites:
                for paradigm in paradigms:
                    for projected in (False, True):
                        add(suite, paradigm, "pegp" if projected else "plain", seed, projected=projected, kind=suite)
        if "iid" in suites:
            for kind in ("s1", "s3", "s4"):
                for paradigm in paradigms:
                    add(f"iid-{kind}", paradigm, "iid-1ep", seed, projected=False, kind=kind, joint_epochs=1)
        if "refs" in suites:
            add("refs", "none", "frozen-linear", seed, projected=False, head="linear-free")
            add("refs", "none", "frozen-ncm", seed, projected=False, head="ncm")
            for paradigm in paradigms:
                add("refs", paradigm, f"joint-{JOINT_EPOCHS}ep", seed, projected=False, joint_epochs=JOINT_EPOCHS)
            for paradigm in paradigms:  # offline with a linear head (all classes present: no incremental bias)
                add("refs", paradigm, f"joint-linear-{JOINT_EPOCHS}ep", seed, projected=False, head="linear-free",
                    joint_epochs=JOINT_EPOCHS, head_lr=JOINT_LINEAR_HEAD_LR)
    return runs


def _execute(job: tuple[Run, Path, int]) -> tuple[str, float, str]:
    """Worker: one run, in its own process (one torch thread pool per worker)."""
    run, out, threads = job
    import torch

    from pegp_stream.config import EvalConfig, to_config
    from pegp_stream.evaluation.run import run_eval

    torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        result = run_eval(to_config(EvalConfig, run.config))
        result.write(run.folder(out))
    except Exception as exc:  # reported and left undone; the grid goes on
        return run.config["name"], time.perf_counter() - started, f"failed: {exc!r}"
    return run.config["name"], time.perf_counter() - started, (
        f"A={result.average_accuracy:.3f} F={result.forgetting if result.forgetting is not None else float('nan'):.3f}"
        f" boundaries={len(result.learner_boundaries)}")


def run_grid(runs: Sequence[Run], out: Path, workers: int, threads: int) -> int:
    todo = [r for r in runs if not (r.folder(out) / "result.json").exists()]
    print(f"{len(runs)} runs planned, {len(runs) - len(todo)} already done, {len(todo)} to run", flush=True)
    failures = 0
    jobs = [(r, out, threads) for r in todo]
    if workers <= 1:
        results = map(_execute, jobs)
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers, maxtasksperchild=1)
        results = pool.imap_unordered(_execute, jobs)
    for done, (name, seconds, outcome) in enumerate(results, 1):
        failures += outcome.startswith("failed")
        print(f"[{done}/{len(todo)}] {name}: {outcome} ({seconds:.0f} s)", flush=True)
    if workers > 1:
        pool.close()
        pool.join()
    return failures


# ------------------------------------------------------------------------------------------------ report

COLUMNS = ["suite", "paradigm", "variant", "seeds", "avg_acc", "forgetting", "bwt", "prequential",
           "boundaries", "rank_fill", "records_per_s"]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(out: Path) -> list[dict[str, Any]]:
    """One row per configuration: mean and sample standard deviation over its seeds."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for path in sorted(out.glob("*/*/*/seed*/result.json")):
        suite, paradigm, variant = path.parts[-5:-2]
        groups.setdefault((suite, paradigm, variant), []).append(json.loads(path.read_text()))
    rows = []
    for (suite, paradigm, variant), results in groups.items():
        row: dict[str, Any] = {"suite": suite, "paradigm": paradigm, "variant": variant, "seeds": len(results)}
        for column, key in (("avg_acc", "average_accuracy"), ("forgetting", "forgetting"),
                            ("bwt", "backward_transfer"), ("prequential", "prequential_accuracy"),
                            ("records_per_s", "records_per_second"), ("probe_acc", "probe_average_accuracy"),
                            ("refit_acc", "refit_average_accuracy")):
            row[f"{column}_mean"], row[f"{column}_std"] = _mean_std([r.get(key) for r in results])
        row["boundaries_mean"], _ = _mean_std([len(r["learner_boundaries"]) for r in results])
        detection = [_detection(r) for r in results if r["true_boundaries"]]
        row["detected_mean"], _ = _mean_std([found for found, _ in detection]) if detection else (None, None)
        row["delay_mean"], _ = _mean_std([delay for _, delay in detection if delay is not None])
        fills = [sum(r["ranks"].values()) / max(1, sum(r["capacities"].values())) for r in results if r["capacities"]]
        row["rank_fill_mean"] = statistics.fmean(fills) if fills else None
        rows.append(row)
    return rows


def _detection(result: dict, before: int = 50, after: int = 150) -> tuple[float, float | None]:
    """Share of true segment starts with a learner boundary within [start - before, start + after] (blurry
    windows mix neighbours around the start), and the mean signed delay of those matches in samples."""
    positions = [b["position"] for b in result["learner_boundaries"]]
    delays = []
    for start in result["true_boundaries"]:
        near = [p - start for p in positions if -before <= p - start <= after]
        if near:
            delays.append(min(near, key=abs))
    share = len(delays) / len(result["true_boundaries"])
    return share, (statistics.fmean(delays) if delays else None)


def _pm(row: dict, column: str, digits: int = 3) -> str:
    mean, std = row.get(f"{column}_mean"), row.get(f"{column}_std")
    if mean is None or mean != mean:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def markdown(rows: Sequence[dict]) -> str:
    header = "| suite | paradigm | variant | seeds | avg acc | forgetting | BWT | prequential | boundaries | " \
             "found (delay) | basis fill | probe A | refit A | rec/s |"
    lines = [header, "|" + "---|" * 14]
    for r in rows:
        fill = "-" if r["rank_fill_mean"] is None else f"{r['rank_fill_mean']:.2f}"
        found = "-" if r["detected_mean"] is None else f"{r['detected_mean']:.2f}" + (
            f" ({r['delay_mean']:+.0f})" if r["delay_mean"] == r["delay_mean"] else "")
        lines.append(f"| {r['suite']} | {r['paradigm']} | {r['variant']} | {r['seeds']} | {_pm(r, 'avg_acc')} | "
                     f"{_pm(r, 'forgetting')} | {_pm(r, 'bwt')} | {_pm(r, 'prequential')} | "
                     f"{r['boundaries_mean']:.1f} | {found} | {fill} | {_pm(r, 'probe_acc')} | {_pm(r, 'refit_acc')} | "
                     f"{_pm(r, 'records_per_s', 0)} |")
    return "\n".join(lines)


def targets(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Per suite and paradigm: forgetting ratio plain / PEGP (target >= 2) and accuracy change (target >= 0)."""
    index = {(r["suite"], r["paradigm"], r["variant"]): r for r in rows}
    checks = []
    for (suite, paradigm, variant), pegp in index.items():
        plain = index.get((suite, paradigm, "plain"))
        if variant != "pegp" or plain is None:
            continue
        ratio = plain["forgetting_mean"] / pegp["forgetting_mean"] if pegp["forgetting_mean"] > 0 else float("inf")
        delta = pegp["avg_acc_mean"] - plain["avg_acc_mean"]
        checks.append({"suite": suite, "paradigm": paradigm, "forgetting_plain": plain["forgetting_mean"],
                       "forgetting_pegp": pegp["forgetting_mean"], "ratio": ratio, "acc_delta": delta,
                       "met": ratio >= 2 and delta >= 0})
    return checks


def report(out: Path) -> int:
    from pegp_stream.evaluation.plots import plot_forgetting

    rows = summarise(out)
    if not rows:
        print(f"no results under {out}", file=sys.stderr)
        return 1
    columns = ["suite", "paradigm", "variant", "seeds"] + [
        f"{c}_{s}" for c in ("avg_acc", "forgetting", "bwt", "prequential", "records_per_s", "probe_acc", "refit_acc")
        for s in ("mean", "std")
    ] + ["boundaries_mean", "detected_mean", "delay_mean", "rank_fill_mean"]
    write_csv(out / "summary.csv", rows, columns)
    checks = targets(rows)
    write_csv(out / "targets.csv", checks, list(checks[0]) if checks else ["suite"])
    (out / "summary.md").write_text(markdown(rows) + "\n", encoding="utf-8")
    print(format_table([{c: r.get(c) for c in ("suite", "paradigm", "variant", "seeds", "avg_acc_mean",
                                                "avg_acc_std", "forgetting_mean", "forgetting_std",
                                                "boundaries_mean")} for r in rows],
                       ["suite", "paradigm", "variant", "seeds", "avg_acc_mean", "avg_acc_std", "forgetting_mean",
                        "forgetting_std", "boundaries_mean"]))
    if checks:
        print()
        print(format_table(checks, list(checks[0])))
    for suite in STREAMS:
        chosen = [r for r in rows if r["suite"] == suite]
        if chosen:
            plot_forgetting(chosen, out / f"forgetting-{suite}.png", f"{suite.upper()}: forgetting per paradigm")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.evidence", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "report", "slda-peer", "feature-drift"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--suites", default=",".join(SUITES), help="comma-separated: " + ", ".join(SUITES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--paradigms", default=",".join(PARADIGMS))
    parser.add_argument("--variants", default="",
                        help="comma-separated: only runs of these variants (plain, pegp, a head or reference name); "
                             "default all")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one process each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--limit-per-class", type=int, default=300, help="training samples per class (0: all)")
    parser.add_argument("--test-limit-per-class", type=int, default=100, help="held-out samples per class")
    parser.add_argument("--backbone", type=Path, default=None,
                        help=f"pretrained backbone (default: {BACKBONE_FILE.relative_to(ROOT.parent)}; "
                             "--quick: random init)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override an EvalConfig key in every run (repeatable), e.g. learner.projection.eps=0.99")
    parser.add_argument("--quick", action="store_true",
                        help="tiny random ViT on scikit-learn digits: checks the pipeline in seconds")
    parser.add_argument("--shrinkage", type=float, default=None,
                        help="slda-peer: the shrinkage of both LDAs (default: learner.head.slda_shrinkage's)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="feature-drift: a variant to measure (repeatable; default: frozen and the shipped "
                             "defaults)")
    parser.add_argument("--steps", type=int, default=0, help="feature-drift: steps of segment 1 (0: all of it)")
    parser.add_argument("--every", type=int, default=150, help="feature-drift: steps between measurements")
    args = parser.parse_args(argv)
    if args.command == "report":
        return report(args.out)
    suites = [s for s in args.suites.split(",") if s]
    unknown = set(suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suites {sorted(unknown)}")
    backbone = args.backbone or (None if args.quick else BACKBONE_FILE)
    if backbone is not None and not backbone.exists():
        parser.error(f"backbone {backbone} not found (see benchmarks/assets/README.md to rebuild it)")
    if args.command in ("slda-peer", "feature-drift"):
        return _in_process(args, backbone)
    runs = plan(suites, [int(s) for s in args.seeds.split(",")], args.paradigms.split(","), args.quick, backbone,
                args.limit_per_class, args.test_limit_per_class, args.overrides)
    variants = {v for v in args.variants.split(",") if v}
    if variants:
        runs = [run for run in runs if run.variant in variants]
        if not runs:
            parser.error(f"no planned run has a variant in {sorted(variants)}")
    failures = run_grid(runs, args.out, args.workers, args.threads)
    report(args.out)
    return 1 if failures else 0


def _in_process(args: argparse.Namespace, backbone: Path | None) -> int:
    """slda-peer and feature-drift run in this process, on `--threads` torch threads; the caller's thread count
    is restored afterwards (the tests call main in-process, and a changed count changes later tests' floats)."""
    import torch

    from . import feature_drift, slda_peer

    module = slda_peer if args.command == "slda-peer" else feature_drift
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads)
        return module.run(args, backbone)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
