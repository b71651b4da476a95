"""projection-cost: learn throughput with PEGP projection on vs off, per PET paradigm, in one interleaved run.

Every variant learns the same segment and consolidates first, so the projecting learners have non-empty
bases (the projection is a no-op on empty ones) and all variants carry the same history. Then each
variant takes one `learn_many` step per round, rounds interleaved (see common.py). Afterwards each
projecting learner is instrumented (its spaces' methods wrapped with clocks, nothing in pegp_stream
changed) for a per-component breakdown of where the projection's time goes; `--profile` adds a
torch.profiler op table.

On CUDA (`--device cuda`) every timer reading follows a device synchronize, and each row also gets the
variant's memory: `resident_mib` (what its learner keeps on the GPU between steps) and `peak_mem_mib`
(resident plus the largest rise of torch.cuda.max_memory_allocated within one of its steps, peak stats
reset before each step): the peak the configuration would reach alone, although both variants of a
paradigm share the GPU while they are timed side by side. benchmarks/gpu.sh runs this on ViT-B/16.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pegp_stream import Learner
from pegp_stream.core.projection.space import ProtectedSpace

from .common import (
    ATTENTION,
    LearnerFeed,
    ModelSize,
    StepClock,
    device_name,
    interleaved,
    learner_config,
    machine_line,
    median,
    mib,
    model_size,
    paired_ratio,
    progress,
    pyplot,
    report,
    step_clock,
    synthetic_batches,
    write_csv,
)

TARGET_OVERHEAD_PCT = 3.0
COLUMNS = [
    "paradigm", "variant", "max_tokens_per_sample", "precision", "attention", "optimizer", "model", "batch", "rounds",
    "step_ms", "samples_per_s", "throughput_ratio", "overhead_pct", "overhead_q1_pct", "overhead_q3_pct",
    "attributed_pct", "total_rank", "rejected_rows", "target_met", "device", "resident_mib", "peak_mem_mib",
]
ALL_WORK = "all projection work"
BREAKDOWN_COLUMNS = ["paradigm", "variant", "component", "ms_per_step", "pct_of_step", "calls_per_step"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token-limits", type=_int_list, default=None,
                        help="max_tokens_per_sample values timed as extra variants (default 65,17; quick: 5; 'none')")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--attention", choices=ATTENTION, default="sdpa",
                        help="timm attention: sdpa (its default, fused) or eager (faster in bf16 on CPU)")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                        help="adam also projects the applied update (ProjectAppliedUpdate)")
    parser.add_argument("--breakdown-steps", type=int, default=None, help="instrumented steps per variant")
    parser.add_argument("--profile", action="store_true", help="write a torch.profiler op table per paradigm")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant before the rounds")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="cap on the timed rounds of all paradigms together, split evenly; a paradigm stops "
                        "after the round that exhausts its share (at least 3 rounds; the rounds column says "
                        "how many ran)")


def run(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    size = model_size(args.quick, args.img_size, args.batch, args.model)
    rounds = args.rounds or (2 if args.quick else 8)
    limits = args.token_limits if args.token_limits is not None else ([5] if args.quick else [65, 17])
    steps = args.breakdown_steps or (1 if args.quick else 3)
    budget = args.time_budget / len(args.paradigms) if args.time_budget is not None else None
    segment = synthetic_batches(size, 1, seed=1, device=args.device)
    batches = synthetic_batches(size, 4, seed=2, device=args.device)
    rows, breakdown, profiles = [], [], []
    for kind in args.paradigms:
        paradigm_rows, parts, profile = _time_paradigm(kind, size, limits, args, segment, batches, rounds, budget,
                                                       steps)
        rows += paradigm_rows
        breakdown += parts
        profiles += [profile] if profile else []
        gc.collect()  # the instrumented learners hold reference cycles; free their GPU memory before the next
        progress(f"{kind}: done, {paradigm_rows[0]['rounds']} rounds")
    cuda = args.device.type == "cuda"
    header = [f"model: {size.describe()}, {args.precision}, {args.attention} attention, {args.optimizer}, "
              f"device {device_name(args.device)}; random-init weights, "
              "synthetic N(0,1) images; bases grown from a one-batch segment before timing",
              machine_line(args),
              f"up to {rounds} interleaved rounds of one learn_many step per variant, after {args.warmup + 1} "
              f"warm-up step(s) each{_budget_note(args)}; ratios are medians of per-round pairs with 'off'; "
              f"target: overhead <= {TARGET_OVERHEAD_PCT:.0f}% for 'on'",
              f"attributed_pct: time inside the projection calls (covariance, subsample, projections) over "
              f"{steps} instrumented steps, as % of those steps (the breakdown table below)"]
    if cuda:
        header.append("timers read after torch.cuda.synchronize; peak_mem_mib = the learner's resident memory + "
                      "the largest torch.cuda.max_memory_allocated rise within one of its steps (input "
                      "batches excluded: they sit on the GPU before timing)")
    shown = ["paradigm", "variant", "rounds", "step_ms", "samples_per_s", "throughput_ratio", "overhead_pct",
             "overhead_q1_pct", "overhead_q3_pct", "attributed_pct", "total_rank", "target_met",
             *(["peak_mem_mib"] if cuda else [])]
    print(report("projection-cost: learn throughput, projection on vs off", header, rows, shown))
    print(report("projection-cost breakdown: instrumented steps of the projecting learners",
                 ["component times are summed over the wrapped pegp_stream calls; pct is of the same steps' "
                  "median wall time"], breakdown, BREAKDOWN_COLUMNS))
    write_csv(out / "projection_cost.csv", rows, COLUMNS)
    write_csv(out / "projection_cost_breakdown.csv", breakdown, BREAKDOWN_COLUMNS)
    if profiles:
        (out / "projection_cost_profile.txt").write_text("\n\n".join(profiles))
    _plot(rows, out / "projection_cost.png", size.describe(), args.precision)
    return rows


def _time_paradigm(
    kind: str, size: ModelSize, limits: list[int], args: argparse.Namespace, segment: list, batches: list,
    rounds: int, budget: float | None, steps: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """One paradigm's variants: built, timed side by side, then instrumented. Returns the summary rows,
    the breakdown rows and the profile table (None without --profile)."""
    clock = step_clock(args.device)
    feeds = _prepared_variants(size, kind, limits, args, segment, batches, clock)
    times = interleaved({name: feed.step for name, (_, feed) in feeds.items()}, rounds, warmup=args.warmup,
                        clock=clock, budget_s=budget)
    rows, breakdown = [], []
    for name, (limit, feed) in feeds.items():
        row = _summary_row(kind, name, limit, feed, times[name], times["off"], size, args)
        if feed.resident_bytes is not None:
            row["resident_mib"] = mib(feed.resident_bytes)
            row["peak_mem_mib"] = mib(feed.resident_bytes + clock.peak_bytes[name])
        if name != "off":  # after the timed rounds: instrumenting wraps the learner's methods for good
            parts = _component_breakdown(kind, name, feed, steps, step_clock(args.device))
            row["attributed_pct"] = next(p["pct_of_step"] for p in parts if p["component"] == ALL_WORK)
            breakdown += parts
        rows.append(row)
    profile = _profile_table(kind, feeds, args.device.type == "cuda") if args.profile else None
    return rows, breakdown, profile


def _prepared_variants(
    size: ModelSize, kind: str, limits: list[int], args: argparse.Namespace, segment: list, batches: list,
    clock: StepClock,
) -> dict[str, tuple[int | None, LearnerFeed]]:
    """off, on, and on with each token limit: built, segment learned and consolidated."""
    variants: dict[str, tuple[bool, int | None]] = {"off": (False, None), "on": (True, None)}
    variants.update({f"on, tokens<={limit}": (True, limit) for limit in limits})
    feeds = {}
    for name, (enabled, limit) in variants.items():
        config = learner_config(size, kind, projection=enabled, max_tokens=limit, precision=args.precision,
                                optimizer=args.optimizer, seed=args.seed, device=args.device)
        feeds[name] = (limit, LearnerFeed.prepared(config, segment, batches, attention=args.attention, clock=clock))
    return feeds


def _summary_row(
    kind: str, name: str, limit: int | None, feed: LearnerFeed, times: list[float], off_times: list[float],
    size: ModelSize, args: argparse.Namespace,
) -> dict[str, Any]:
    ratio, q1, q3 = paired_ratio(times, off_times)  # step-time ratio variant / off, per round
    step = median(times)
    return {
        "paradigm": kind, "variant": name, "max_tokens_per_sample": limit, "precision": args.precision,
        "attention": args.attention, "optimizer": args.optimizer, "model": size.describe(), "batch": size.batch,
        "rounds": len(times),
        "step_ms": step * 1e3, "samples_per_s": size.batch / step, "throughput_ratio": 1.0 / ratio,
        "overhead_pct": (ratio - 1.0) * 100, "overhead_q1_pct": (q1 - 1.0) * 100,
        "overhead_q3_pct": (q3 - 1.0) * 100, "total_rank": feed.total_rank, "rejected_rows": feed.rejected,
        "target_met": "-" if name == "off" else _yes((ratio - 1.0) * 100 <= TARGET_OVERHEAD_PCT),
        "device": device_name(args.device),
    }


def _budget_note(args: argparse.Namespace) -> str:
    if args.time_budget is None:
        return ""
    return f", timed rounds capped at {args.time_budget:.0f} s over all paradigms"


class ComponentClock:
    """Accumulates wall time and call counts per component over wrapped callables. `synchronize` runs
    before each timer reading (on CUDA: so a component is charged for its kernels, not only their launch;
    this serialises the instrumented steps, which is why they are not the timed rounds)."""

    def __init__(self, synchronize: Callable[[], None] = lambda: None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.synchronize = synchronize

    def wrap(self, component: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.synchronize()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.synchronize()
                self.seconds[component] += time.perf_counter() - start
                self.calls[component] += 1

        return timed

    def wrap_context(self, component: str, factory: Callable[[], contextlib.AbstractContextManager]) -> Callable:
        """Time a context manager's enter and exit, not the body it wraps (the optimizer step)."""

        @contextlib.contextmanager
        def timed() -> Iterator[None]:
            manager = factory()
            self.synchronize()
            start = time.perf_counter()
            manager.__enter__()
            self.synchronize()
            self.seconds[component] += time.perf_counter() - start
            self.calls[component] += 1
            try:
                yield
            finally:
                self.synchronize()
                start = time.perf_counter()
                manager.__exit__(None, None, None)
                self.synchronize()
                self.seconds[component] += time.perf_counter() - start

        return timed


def _space_group(space: ProtectedSpace) -> str:
    if space.name == "head":
        return "head"
    if space.spec.bottleneck:
        return f"r-dim (rank {space.spec.dim})"
    groups = f" in {space.spec.groups} groups" if space.spec.groups > 1 else ""
    return f"{space.spec.dim}-dim{groups}"


def instrument(learner: Learner, clock: ComponentClock) -> None:
    """Wrap the learner's projection work with clocks (instance attributes shadow the methods)."""
    for space in learner.spaces:
        group = _space_group(space)
        space.accumulate = clock.wrap(f"covariance accumulate, {group} spaces", space.accumulate)
        space.project_params_grad_ = clock.wrap(f"gradient projection, {group} spaces", space.project_params_grad_)
    learner._subsample_tokens = clock.wrap("token subsample", learner._subsample_tokens)
    update = learner.update_projection
    update.around_step = clock.wrap_context("applied-update copy + projection", update.around_step)


def _component_breakdown(
    kind: str, name: str, feed: LearnerFeed, steps: int, step_timer: StepClock
) -> list[dict[str, Any]]:
    clock = ComponentClock(step_timer.synchronize)
    instrument(feed.learner, clock)
    step = median([step_timer.time(name, feed.step) for _ in range(steps)])
    rows = [{"paradigm": kind, "variant": name, "component": component, "ms_per_step": seconds / steps * 1e3,
             "pct_of_step": seconds / steps / step * 100, "calls_per_step": clock.calls[component] // steps}
            for component, seconds in sorted(clock.seconds.items())]
    total = sum(clock.seconds.values()) / steps
    rows.append({"paradigm": kind, "variant": name, "component": ALL_WORK, "ms_per_step": total * 1e3,
                 "pct_of_step": total / step * 100, "calls_per_step": None})
    rows.append({"paradigm": kind, "variant": name, "component": "whole learn_many step", "ms_per_step": step * 1e3,
                 "pct_of_step": 100.0, "calls_per_step": 1})
    return rows


def _profile_table(kind: str, feeds: dict[str, tuple[int | None, LearnerFeed]], cuda: bool) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    parts = []
    for name in ("off", "on"):
        feed = feeds[name][1]
        with profile(activities=activities) as prof:
            for _ in range(2):
                feed.step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
        parts.append(f"== {kind}, projection {name}, 2 learn_many steps ==\n{table}")
    return "\n".join(parts)


def _plot(rows: list[dict[str, Any]], path: Path, model: str, precision: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    paradigms = list(dict.fromkeys(row["paradigm"] for row in rows))
    variants = [v for v in dict.fromkeys(row["variant"] for row in rows) if v != "off"]
    by_key = {(row["paradigm"], row["variant"]): row for row in rows}
    width = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, variant in enumerate(variants):
        values = [by_key[p, variant]["overhead_pct"] for p in paradigms]
        low = [v - by_key[p, variant]["overhead_q1_pct"] for p, v in zip(paradigms, values, strict=True)]
        high = [by_key[p, variant]["overhead_q3_pct"] - v for p, v in zip(paradigms, values, strict=True)]
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(paradigms))]
        ax.bar(xs, values, width, yerr=[low, high], capsize=3, label=variant)
        attributed = [by_key[p, variant].get("attributed_pct") for p in paradigms]
        ax.plot(xs, attributed, "kD", markersize=4, label="attributed (instrumented)" if i == 0 else None)
    ax.axhline(TARGET_OVERHEAD_PCT, color="red", linestyle="--", label=f"target {TARGET_OVERHEAD_PCT:.0f}%")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(paradigms)), paradigms)
    ax.set_ylabel("step-time overhead vs off (%): bars median and IQR of\nper-round pairs, diamonds instrumented")
    ax.set_title(f"PEGP projection overhead, {precision}\n{model}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _int_list(text: str) -> list[int]:
    """'65,17' -> [65, 17]; 'none' -> [] (no subsampling variants)."""
    if text.strip().lower() == "none":
        return []
    return [int(part) for part in text.split(",") if part.strip()]

