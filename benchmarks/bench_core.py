"""Core benchmarks of pegp-stream: the projection's cost per step, the basis refresh, the step bound and the
head's cost per step.

    python -m benchmarks.bench_core projection-cost [--quick] [--out DIR]
    python -m benchmarks.bench_core basis-refresh   [--quick] [--out DIR]
    python -m benchmarks.bench_core step-bound      [--quick] [--out DIR]
    python -m benchmarks.bench_core head-cost       [--quick] [--out DIR]

Each subcommand prints a table, writes `<name>.csv` (and a PNG) to `--out`; `--quick` runs a tiny model
(depth 2, width 64, 32 px) in seconds, for smoke tests. projection-cost and step-bound also take
`--model` (a timm ViT name) and `--device cuda` (benchmarks/gpu.sh). See benchmarks/README.md for what each
measures.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from . import basis_refresh, head_cost, projection_cost, step_bound
from .common import DEFAULT_MODEL, PARADIGMS, load_average, parse_device

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
SUBCOMMANDS = {
    "projection-cost": (projection_cost, "learn throughput with projection on vs off, per paradigm"),
    "basis-refresh": (basis_refresh, "randomized vs exact eigensolvers vs full SVD for basis growth"),
    "step-bound": (step_bound, "learn throughput over the frozen backbone's forward + input-gradient floor"),
    "head-cost": (head_cost, "the classifier head's share of a learn step, per head kind (ncm, slda, ridge)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_core", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for CSV/PNG (default: %(default)s)")
        sub.add_argument("--quick", action="store_true", help="tiny model / sizes: a smoke test in seconds")
        sub.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default per command)")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--flush-denormal", action="store_true",
                         help="torch.set_flush_denormal(True) for the run (denormal floats slow x86 FMAs badly)")
        sub.add_argument("--threads", type=int, default=1,
                         help="torch intra-op threads (default 1, see README: shared cores; 0 = torch's default)")
        if module is not basis_refresh:
            sub.add_argument("--img-size", type=int, default=None, help="backbone img_size (default 224; quick 32)")
            sub.add_argument("--batch", type=int, default=None, help="batch size (default 16; quick 4)")
            sub.add_argument("--model", default=DEFAULT_MODEL,
                             help="timm ViT name, random init (default %(default)s; --quick ignores it)")
            sub.add_argument("--device", type=parse_device, default="cpu",
                             help="cpu, cuda, cuda:N or auto (default %(default)s); on CUDA the timers "
                             "synchronize the device")
            sub.add_argument("--paradigms", type=_paradigms, default=list(PARADIGMS),
                             help="comma-separated PET kinds (default: all four)")
        module.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, _ = SUBCOMMANDS[args.command]
    args.out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    # Global torch state is set for the run and restored afterwards (the smoke tests call main in-process).
    # One thread by default: on 2 shared cores, a second OpenMP thread that waits for a core another process
    # holds turns kernels into barrier stalls (measured: a tiny-model step went from 4 ms to 200 ms), which
    # hits the many small projection kernels hardest and makes ratios meaningless.
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            if args.threads:
                torch.set_num_threads(args.threads)
            torch.set_flush_denormal(args.flush_denormal)
            args.load_at_start = load_average()
            start = time.perf_counter()
            module.run(args, args.out)
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)  # torch's default; it has no getter to restore from
    print(f"[{args.command}] done in {time.perf_counter() - start:.1f} s; results in {args.out}")
    return 0


def _paradigms(text: str) -> list[str]:
    kinds = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [k for k in kinds if k not in PARADIGMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown paradigm(s) {unknown}; valid: {', '.join(PARADIGMS)}")
    return kinds


if __name__ == "__main__":
    sys.exit(main())
