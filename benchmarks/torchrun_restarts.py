"""Does a torchrun group come back after one rank is killed? Restarts of a bare two-rank gloo group, with the
rendezvous store torchrun shares with its workers across restarts (its default) and with a fresh one per restart
(TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1), side by side (pytorch/pytorch#135712, #167288).

    python -m benchmarks.torchrun_restarts [--runs 10] [--timeout 120] [--out DIR]

Each run: `torchrun --standalone --nproc-per-node 2 --max-restarts 1` of this module as the worker. Both ranks join
(gloo), all-reduce once, then rank 1 kills itself with SIGKILL; torchrun restarts the group, and the run counts as
come back when both ranks of the restart all-reduce again. Otherwise it failed (gloo's "Connection refused" when
a restarted rank read an address the previous attempt left in the store) or hung (killed after --timeout s).
No pegp_stream code runs: this measures torch itself, to decide what docs/operations.md tells users to set.
Prints a table and writes torchrun_restarts.csv to --out.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .common import format_table, write_csv

COLUMNS = ["setting", "runs", "came back", "failed", "hung"]
SETTINGS = {"shared store (torchrun's default)": "0", "fresh store per restart": "1"}


def worker() -> None:
    """One rank: join, all-reduce, and on the first attempt rank 1 dies by SIGKILL after the others joined."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    ones = torch.ones(1)
    dist.all_reduce(ones)
    first = os.environ["TORCHELASTIC_RESTART_COUNT"] == "0"
    if first and dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if first:
        time.sleep(5)  # rank 0 waits in the next collective's place until torchrun stops it
    dist.all_reduce(ones)
    print(f"came back: rank {dist.get_rank()}", flush=True)
    dist.destroy_process_group()


def one_run(share: str, timeout: float, log: Path) -> str:
    """'came back', 'failed' or 'hung' for one torchrun of two ranks with one restart."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--max-restarts", "1", "-m", "benchmarks.torchrun_restarts", "--worker"]
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": share, "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        launcher = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = launcher.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM: torchrun stops its workers (they run in sessions of their own, out of a killpg's reach)
            launcher.terminate()
            try:
                launcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
            return "hung"
    return "came back" if code == 0 and log.read_text().count("came back") == 2 else "failed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per setting (interleaved)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a run counts as hung")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/torchrun-restarts"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker()
    args.out.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, list[str]] = {name: [] for name in SETTINGS}
    for run in range(args.runs):  # interleaved, so a noisy spell hits both settings alike
        for name, share in SETTINGS.items():
            outcomes[name].append(one_run(share, args.timeout, args.out / f"run{run}-share{share}.log"))
    rows = [{"setting": name, "runs": len(seen), **{k: seen.count(k) for k in ("came back", "failed", "hung")}}
            for name, seen in outcomes.items()]
    print(format_table(rows, COLUMNS))
    write_csv(args.out / "torchrun_restarts.csv", rows, COLUMNS)


if __name__ == "__main__":
    main()
