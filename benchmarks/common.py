"""What the benchmarks share: model sizes, synthetic batches, prepared learners, interleaved timing,
and the table / CSV / PNG writers.

Timing discipline (the machines are 2 shared, noisy cores): every variant of a comparison is built up
front, then timed one step at a time in rounds, the order rotated each round, so slow phases of the
machine hit every variant alike. Ratios are taken per round (paired) and summarised by their median.
On CUDA the clock synchronizes the device before reading the timer (kernels run asynchronously) and
records each variant's peak memory (see CudaStepClock).
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers import Attention

from pegp_stream import Learner, create_learner

PARADIGMS = ("prompt", "prefix", "adapter", "lora")
CLASSES = 10
ATTENTION = ("sdpa", "eager")  # timm's fused F.scaled_dot_product_attention (its default) / explicit q k^T softmax v


@dataclass(frozen=True)
class ModelSize:
    """A backbone (timm name plus kwargs) and the batch size it is timed at."""

    backbone: dict[str, Any]
    batch: int

    @property
    def img_size(self) -> int:
        return int(self.backbone["img_size"])

    @property
    def tokens(self) -> int:
        patch = int(self.backbone.get("patch_size", 16))
        return (self.img_size // patch) ** 2 + 1

    def describe(self) -> str:
        extra = {k: v for k, v in self.backbone.items() if k not in ("name", "img_size")}
        options = "".join(f", {k}={v}" for k, v in extra.items())
        name = self.backbone["name"]
        return f"{name} at img_size {self.img_size}{options} ({self.tokens} tokens), batch {self.batch}"


DEFAULT_MODEL = "vit_tiny_patch16_224"


def model_size(
    quick: bool, img_size: int | None = None, batch: int | None = None, model: str | None = None
) -> ModelSize:
    """The timm `model` (default ViT-Tiny: depth 12, width 192, 3 heads) at 224 px, or, with `quick`, a
    depth-2 width-64 32 px model (`model` is then ignored: quick is the smoke-test size)."""
    if quick:
        backbone = {"name": DEFAULT_MODEL, "img_size": 32, "patch_size": 8, "embed_dim": 64,
                    "depth": 2, "num_heads": 2}
        size = ModelSize(backbone, 4)
    else:
        size = ModelSize({"name": model or DEFAULT_MODEL, "img_size": 224}, 16)
    backbone = dict(size.backbone, **({"img_size": img_size} if img_size else {}))
    return ModelSize(backbone, batch or size.batch)


def synthetic_batches(
    size: ModelSize, count: int, seed: int = 0, device: torch.device | str = "cpu"
) -> list[tuple[torch.Tensor, list[int]]]:
    """`count` batches of N(0, 1) images (already 'normalised') with labels cycling over CLASSES, drawn on
    the CPU (same images on every device) and placed on `device`, so no step pays a host-to-device copy."""
    generator = torch.Generator().manual_seed(seed)
    shape = (size.batch, 3, size.img_size, size.img_size)
    batches = []
    for b in range(count):
        images = torch.randn(shape, generator=generator).to(device)
        labels = [(b * size.batch + i) % CLASSES for i in range(size.batch)]
        batches.append((images, labels))
    return batches


def parse_device(text: str) -> torch.device:
    """argparse type for `--device`: cpu, cuda, cuda:N or auto (cuda when available); CUDA must be usable."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; valid: cpu, cuda, cuda:N, auto") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"device {text!r}: only cpu and cuda are benchmarked")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r}: torch.cuda.is_available() is False")
    return device


def learner_config(
    size: ModelSize,
    kind: str,
    *,
    projection: bool = True,
    max_tokens: int | None = None,
    precision: str = "fp32",
    optimizer: str = "sgd",
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    # lr 0.01: the timed steps revisit the same few batches; a larger rate can diverge, and a rejected
    # (non-finite) row makes the learner run a second forward, which would distort the timing.
    return {
        "backbone": dict(size.backbone),
        "pet": {"kind": kind},
        "projection": {"enabled": projection, "eps": 0.95, "max_tokens_per_sample": max_tokens},
        "optimizer": {"name": optimizer, "lr": 0.01 if optimizer == "sgd" else 1e-3},
        "precision": precision,
        "device": str(device),
        "seed": seed,
    }


def set_attention(model: torch.nn.Module, mode: str) -> None:
    """Switch every timm Attention inside `model` to fused SDPA or eager attention (a timm attribute; the
    prefix wrapper follows its base layer's setting). Benchmarks only: pegp_stream has no such option."""
    if mode not in ATTENTION:
        raise ValueError(f"attention mode {mode!r}; valid: {', '.join(ATTENTION)}")
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused_attn = mode == "sdpa"


class StepClock:
    """Wall seconds of one call, read around it with perf_counter: the CPU clock. `device_memory` is None
    and `peak_bytes` stays empty; CudaStepClock fills both."""

    def __init__(self) -> None:
        self.peak_bytes: dict[str, int] = defaultdict(int)

    def synchronize(self) -> None:
        """Wait for queued device work (nothing to wait for on the CPU)."""

    def device_memory(self) -> int | None:
        """Bytes of live tensors on the device, after queued work finished; None on the CPU."""
        return None

    def time(self, name: str, call: Callable[[], None]) -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start


class CudaStepClock(StepClock):
    """The CUDA clock. Kernels run asynchronously, so the device is synchronized before the timer starts
    (the previous call's kernels are not charged to this one) and before it stops (this call's are).
    Each call also records, in `peak_bytes[name]`, how far torch.cuda.max_memory_allocated rose above the
    bytes allocated when the call began (peak stats reset just before, outside the timed window): the
    call's transient memory, whatever other variants keep resident meanwhile."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def device_memory(self) -> int:
        gc.collect()  # tensors only a reference cycle still holds would otherwise count
        self.synchronize()
        return torch.cuda.memory_allocated(self.device)

    def time(self, name: str, call: Callable[[], None]) -> float:
        self.synchronize()
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        call()
        self.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(self.device) - before
        self.peak_bytes[name] = max(self.peak_bytes[name], peak)
        return seconds


def step_clock(device: torch.device) -> StepClock:
    """The clock for `device`: CudaStepClock on CUDA, the plain CPU clock otherwise."""
    return CudaStepClock(device) if device.type == "cuda" else StepClock()


@dataclass
class LearnerFeed:
    """A learner that has learned one segment, consolidated (so its bases are non-empty) and taken one
    step past it, then steps through `batches` cyclically. `rejected` counts rows the learner refused
    (should stay 0). `resident_bytes`: device memory the learner keeps between steps (backbone, PET, head,
    optimizer state, covariances, bases), measured on CUDA only."""

    learner: Learner
    batches: Sequence[tuple[torch.Tensor, list[int]]]
    position: int = 0
    rejected: int = 0
    ranks: dict[str, int] = field(default_factory=dict)
    resident_bytes: int | None = None

    @classmethod
    def prepared(
        cls, config: Mapping[str, Any], segment: Sequence, batches: Sequence, attention: str = "sdpa",
        clock: StepClock | None = None,
    ) -> LearnerFeed:
        clock = clock or StepClock()
        before = clock.device_memory()
        learner = create_learner(config)
        set_attention(learner.backbone, attention)
        feed = cls(learner, batches)
        for images, labels in segment:
            feed.rejected += len(learner.learn_many(images, labels).rejected)
        feed.ranks = learner.consolidate()
        feed.step()  # the optimizer state (momentum), cleared by consolidate, exists again from here on
        after = clock.device_memory()
        feed.resident_bytes = None if before is None or after is None else after - before
        return feed

    def step(self) -> None:
        images, labels = self.batches[self.position % len(self.batches)]
        self.position += 1
        self.rejected += len(self.learner.learn_many(images, labels).rejected)

    @property
    def total_rank(self) -> int:
        return sum(self.ranks.values())


def interleaved(
    variants: Mapping[str, Callable[[], None]],
    rounds: int,
    warmup: int = 1,
    clock: StepClock | None = None,
    budget_s: float | None = None,
    min_rounds: int = 3,
) -> dict[str, list[float]]:
    """Seconds per call of every variant, `rounds` calls each, one call per variant per round, the order
    rotated each round. `warmup` untimed calls per variant first (allocator, oneDNN/cuBLAS kernel caches).
    With `budget_s`, rounds stop early once the timed rounds have used that many seconds and at least
    `min_rounds` are done (whole rounds only, so the pairs stay intact; the lists say how many ran)."""
    clock = clock or StepClock()
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    clock.synchronize()
    gc.collect()
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(rounds):
        if budget_s is not None and r >= min_rounds and time.perf_counter() - start > budget_s:
            break
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(clock.time(name, variants[name]))
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> tuple[float, float, float]:
    """Median, first and third quartile of the per-round ratios numerator[r] / denominator[r]."""
    ratios = sorted(n / d for n, d in zip(numerator, denominator, strict=True))
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), q1, q3


def progress(message: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def machine_line(args: Any) -> str:
    """Where and how the numbers were taken; `args.load_at_start` is set by the CLI before the run."""
    line = (f"machine: {os.cpu_count()} CPU cores (shared), torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, {platform.python_implementation()} {platform.python_version()}, "
            f"flush-denormal {'on' if args.flush_denormal else 'off'}, load average "
            f"{getattr(args, 'load_at_start', float('nan')):.2f} at start, {load_average():.2f} at end")
    device = getattr(args, "device", None)
    return line if device is None or device.type != "cuda" else f"{line}; {gpu_line(device)}"


def gpu_line(device: torch.device) -> str:
    """The GPU and the CUDA stack torch runs on."""
    props = torch.cuda.get_device_properties(device)
    return (f"GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB, compute capability "
            f"{props.major}.{props.minor}), CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")


def device_name(device: torch.device) -> str:
    """`cpu`, or e.g. `cuda:0 NVIDIA H200`: the device column of the CSVs."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Plain-text table, right-aligned numbers, left-aligned text."""
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    numeric = [all(_is_number(row.get(col)) or row.get(col) is None for row in rows)
               and any(_is_number(row.get(col)) for row in rows) for col in columns]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(columns)), rule, *(line(r) for r in cells)])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # nan
            return "nan"
        magnitude = abs(value)
        if magnitude >= 100:
            return f"{value:.1f}"
        return f"{value:.2f}" if magnitude >= 10 else f"{value:.4f}"
    return str(value)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def report(title: str, header: Sequence[str], rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """The text a subcommand prints: title, header lines, the table."""
    return "\n".join([title, *(f"  {line}" for line in header), "", format_table(rows, columns), ""])


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or None when matplotlib is not installed (PNG skipped)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
