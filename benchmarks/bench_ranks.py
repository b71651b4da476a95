"""Data-parallel learner throughput: records/s of one learner on 1, 2, ... ranks fed the same global batches, with
each step's time split into compute, communication and waiting (docs/method.md section 9).

    python -m benchmarks.bench_ranks [--ranks 1,2] [--steps 20] [--batch 16] [--device cpu|cuda] [--quick]

Every rank is a process (torch.multiprocessing, spawn) joined the way torchrun joins them (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT): gloo on the CPU, NCCL on cuda:RANK. 1 rank is the plain learner (no process group), in
this process.
Each global batch of --batch rows is cut into N contiguous shares, one per rank; after --warmup steps the
learner consolidates once (so the projection has bases), then --steps steps are timed. A step's time is split by
timing the learner's collective calls (`TimedCollective`):
  waiting        the first collective of a step (the labels' all_gather_object): a rank that is ahead blocks
                 there until the slowest rank arrives, so this is mostly skew (plus that one small exchange);
  communication  every later collective of the step (loss, gradient and head reductions, norms, gathers);
  compute        the rest: forward, backward, projection, optimizer step.
Each is the mean per timed step, averaged over the ranks. On a machine with fewer cores than ranks x threads the
ranks compete for cores: the numbers then show the overhead of the collectives, not a speed-up.
Prints a table and writes bench_ranks.csv to --out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from pegp_stream import create_learner
from pegp_stream.distributed import Collective, SingleProcess, TorchCollective
from pegp_stream.kafka.broker import free_port

from .common import format_table, learner_config, model_size, parse_device, synthetic_batches, write_csv

COLUMNS = ["ranks", "backend", "global_batch", "steps", "records_per_s", "step_ms", "compute_ms",
           "communication_ms", "waiting_ms", "collectives_per_step"]


class TimedCollective:
    """A `Collective` that times the calls it passes on to `inner`: the first call after `start_step` as waiting,
    every later one as communication. On CUDA the device is synchronised around each call (kernels are async)."""

    def __init__(self, inner: Collective, device: torch.device) -> None:
        self.inner, self.rank, self.world_size = inner, inner.rank, inner.world_size
        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.waiting = self.communication = 0.0
        self.calls = 0
        self._first = True

    def start_step(self) -> None:
        self._first = True

    def _timed(self, call: Callable[..., Any], *args: Any) -> Any:
        self._sync()
        start = time.perf_counter()
        result = call(*args)
        self._sync()
        seconds = time.perf_counter() - start
        if self._first:
            self.waiting += seconds
        else:
            self.communication += seconds
        self._first = False
        self.calls += 1
        return result

    def all_reduce(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return self._timed(self.inner.all_reduce, tensors)

    def all_gather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return self._timed(self.inner.all_gather, tensors)

    def all_gather_object(self, value: Any) -> list[Any]:
        return self._timed(self.inner.all_gather_object, value)

    def norm(self, tensor: torch.Tensor) -> float:
        return self._timed(self.inner.norm, tensor)

    def check_equal(self, what: str, tensors: list[torch.Tensor]) -> None:
        self._timed(self.inner.check_equal, what, tensors)


def _join(rank: int, world: int, port: int, device: torch.device) -> Collective:
    """This rank's collective: the plain single process for one rank, else torch.distributed (gloo / NCCL)."""
    if world == 1:
        return SingleProcess()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    return TorchCollective.from_environment(device, timeout=timedelta(seconds=300))


def _rank_main(rank: int, world: int, port: int, options: dict[str, Any], out: str) -> None:
    """One rank: learn the warm-up steps, consolidate, time the steps; save this rank's totals to `out`."""
    if options["threads"] > 0:  # 0: torch's default
        torch.set_num_threads(options["threads"])
    device = torch.device(f"cuda:{rank}") if options["device"] == "cuda" else torch.device("cpu")
    inner = _join(rank, world, port, device)
    try:
        timed = TimedCollective(inner, device)
        size = model_size(options["quick"], batch=options["batch"])
        learner = create_learner(learner_config(size, options["paradigm"], device=device), timed)
        batches = synthetic_batches(size, options["warmup"] + options["steps"], device=device)
        share = slice(rank * size.batch // world, (rank + 1) * size.batch // world)
        for images, labels in batches[: options["warmup"]]:
            learner.learn_many(images[share], labels[share])
        learner.consolidate()
        timed.waiting = timed.communication = 0.0
        timed.calls = 0
        wall = 0.0
        for images, labels in batches[options["warmup"]:]:
            timed.start_step()
            start = time.perf_counter()
            learner.learn_many(images[share], labels[share])
            wall += time.perf_counter() - start
        totals = {"wall": wall, "waiting": timed.waiting, "communication": timed.communication, "calls": timed.calls}
        torch.save(totals, Path(out) / f"rank{rank}.pt")
    finally:
        if isinstance(inner, TorchCollective):
            inner.close()


def run_ranks(world: int, options: dict[str, Any]) -> dict[str, Any]:
    """Spawn `world` ranks over the same global batches; one table row from their totals."""
    with tempfile.TemporaryDirectory() as out:
        if world == 1:  # the plain learner needs no second process (and the smoke test no second start-up)
            threads = torch.get_num_threads()
            try:
                _rank_main(0, 1, 0, options, out)
            finally:  # the caller's process keeps its thread count (a smoke test runs in pytest's own process)
                torch.set_num_threads(threads)
        else:
            mp.start_processes(_rank_main, args=(world, free_port(), options, out), nprocs=world,
                               start_method="spawn")
        ranks = [torch.load(Path(out) / f"rank{r}.pt") for r in range(world)]
    steps = options["steps"]
    per_step = {key: 1e3 * statistics.fmean(r[key] for r in ranks) / steps
                for key in ("wall", "waiting", "communication")}
    backend = "none" if world == 1 else ("nccl" if options["device"] == "cuda" else "gloo")
    return {
        "ranks": world, "backend": backend, "global_batch": options["batch"], "steps": steps,
        "records_per_s": options["batch"] * steps / max(r["wall"] for r in ranks),
        "step_ms": per_step["wall"], "compute_ms": per_step["wall"] - per_step["waiting"] - per_step["communication"],
        "communication_ms": per_step["communication"], "waiting_ms": per_step["waiting"],
        "collectives_per_step": statistics.fmean(r["calls"] for r in ranks) / steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="1,2", help="comma-separated numbers of ranks to run")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the consolidation")
    parser.add_argument("--batch", type=int, default=None, help="global batch (rows per step over all ranks)")
    parser.add_argument("--paradigm", default="adapter", choices=["prompt", "prefix", "adapter", "lora"])
    parser.add_argument("--device", type=parse_device, default=torch.device("cpu"), help="cpu (gloo) or cuda (NCCL)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 3 steps: a smoke test of a few seconds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args(argv)
    quick_steps = {"steps": 3, "warmup": 2} if args.quick else {"steps": args.steps, "warmup": args.warmup}
    options = {"quick": args.quick, "batch": args.batch or (8 if args.quick else 16), "paradigm": args.paradigm,
               "device": args.device.type, "threads": args.threads, **quick_steps}
    rows = [run_ranks(int(n), options) for n in args.ranks.split(",")]
    print(format_table(rows, COLUMNS))
    print(f"CSV: {write_csv(args.out / 'bench_ranks.csv', rows, COLUMNS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
