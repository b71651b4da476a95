"""basis-refresh: the eigensolver behind basis growth, at the sizes a ViT's feature spaces have.

For d in --dims, n token rows F (n x d) with a decaying spectrum (singular values (i+1)^-decay along random
orthonormal directions, like the leading spectrum of real ViT features) and their covariance C = F^T F
(float64, as ProtectedSpace accumulates it). k is the rank the GPM rule with --eps selects from the exact
spectrum. Timed side by side, interleaved:

- randomized: top_eigenpairs(C, k, "randomized") with the config defaults (oversample 20, 2 power iterations)
- eigh: torch.linalg.eigh(C), the exact eigendecomposition of the covariance
- svd f32 / svd f64: torch.linalg.svd(F), the full (thin) SVD of the raw feature matrix
- grow_basis randomized / exact: the end-to-end basis growth from an empty basis
- covariance: F^T F in one go, for scale (the learner spreads this over the segment's steps)

Agreement is subspace_agreement(U_exact[:, :k], U_method[:, :k]) (for grow_basis, at its own rank).
A decaying spectrum has no gap at k, so directions just past k are nearly as strong as those just before
it; energy_ratio = trace(U^T C U) / trace(U_exact^T C U_exact) says how much of the energy the exact
top-k basis captures the method's basis captures (what GPM's protection actually depends on).
A sweep of (oversample, power_iters) at the largest d shows what the randomized solver's accuracy costs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pegp_stream.core.projection.basis import grow_basis, subspace_agreement, top_eigenpairs

from .common import interleaved, machine_line, median, paired_ratio, progress, pyplot, report, write_csv

TARGET_SPEEDUP = 5.0
TARGET_AGREEMENT = 0.99
COLUMNS = ["d", "n", "decay", "eps", "k", "method", "solver", "time_ms", "speedup_vs_svd_f32", "speedup_vs_svd_f64",
           "speedup_vs_eigh", "agreement", "energy_ratio", "rank", "rounds"]
SWEEP_COLUMNS = ["d", "n", "k", "oversample", "power_iters", "time_ms", "agreement", "energy_ratio"]
SWEEP = [(5, 1), (10, 1), (10, 2), (20, 2), (10, 4), (20, 4)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dims", type=lambda t: [int(x) for x in t.split(",")], default=None,
                        help="feature widths (default 192,768; quick 32,64)")
    parser.add_argument("--rows", type=int, default=None, help="token rows n (default 20000; quick 500)")
    parser.add_argument("--decay", type=float, default=0.75, help="singular values (i+1)^-decay")
    parser.add_argument("--eps", type=float, default=0.95, help="GPM energy threshold that selects k")
    parser.add_argument("--oversample", type=int, default=20)
    parser.add_argument("--power-iters", type=int, default=2)


def decaying_features(n: int, d: int, decay: float, seed: int) -> torch.Tensor:
    """n x d float64 rows: Gaussian coefficients scaled by (i+1)^-decay along random orthonormal axes."""
    generator = torch.Generator().manual_seed(seed)
    axes, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    scales = (torch.arange(d, dtype=torch.float64) + 1) ** -decay
    return (torch.randn(n, d, generator=generator, dtype=torch.float64) * scales) @ axes.T


def energy_rank(eigenvalues_desc: torch.Tensor, eps: float) -> int:
    """The GPM rule on an empty basis: components up to and including the one whose energy reaches eps."""
    explained = eigenvalues_desc.cumsum(0) / eigenvalues_desc.sum()
    return min(int((explained < eps).sum()) + 1, eigenvalues_desc.numel())


def captured_energy(covariance: torch.Tensor, basis: torch.Tensor, exact: torch.Tensor) -> float:
    """trace(B^T C B) / trace(E^T C E): the energy `basis` captures relative to the exact top basis."""
    return float(torch.trace(basis.T @ covariance @ basis) / torch.trace(exact.T @ covariance @ exact))


def run(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    dims = args.dims or ([32, 64] if args.quick else [192, 768])
    n = args.rows or (500 if args.quick else 20_000)
    rounds = args.rounds or (2 if args.quick else 5)
    rows, sweep = [], []
    for d in dims:
        rows += _compare(d, n, rounds, args)
        progress(f"d={d}: done")
    sweep = _sweep(max(dims), n, rounds, args)
    header = [f"features: n={n} rows, singular values (i+1)^-{args.decay} on random axes, float64 covariance; "
              f"k = rank selected by eps={args.eps} on the exact spectrum",
              f"randomized = top_eigenpairs(C, k, 'randomized', oversample={args.oversample}, "
              f"power_iters={args.power_iters}) (torch.svd_lowrank)",
              machine_line(args),
              f"{rounds} interleaved rounds; times are medians, speedups medians of per-round pairs; target: "
              f"randomized >= {TARGET_SPEEDUP:.0f}x faster than svd of F at d={max(dims)}, "
              f"agreement >= {TARGET_AGREEMENT}"]
    shown = ["d", "k", "method", "solver", "time_ms", "speedup_vs_svd_f32", "speedup_vs_svd_f64", "speedup_vs_eigh",
             "agreement", "energy_ratio", "rank"]
    print(report("basis-refresh: eigensolvers for basis growth", header, rows, shown))
    print(report(f"basis-refresh sweep: randomized solver settings at d={max(dims)}",
                 [f"agreement with the exact top-{sweep[0]['k']} subspace"], sweep, SWEEP_COLUMNS))
    _print_verdict(rows, max(dims))
    write_csv(out / "basis_refresh.csv", rows, COLUMNS)
    write_csv(out / "basis_refresh_sweep.csv", sweep, SWEEP_COLUMNS)
    _plot(rows, out / "basis_refresh.png", n)
    return rows


def _compare(d: int, n: int, rounds: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    features = decaying_features(n, d, args.decay, args.seed + d)
    features32 = features.float()
    covariance = features.T @ features
    values, vectors = torch.linalg.eigh(covariance)
    exact = vectors.flip(1)
    k = energy_rank(values.flip(0).clamp_min(0), args.eps)
    empty = torch.zeros(d, 0, dtype=torch.float64)
    results: dict[str, Any] = {}

    def keep(name: str, fn: Callable[[], Any]) -> Callable[[], None]:
        def call() -> None:
            results[name] = fn()

        return call

    methods = {
        "randomized": keep("randomized", lambda: top_eigenpairs(
            covariance, k, "randomized", args.oversample, args.power_iters, seed=args.seed)[1]),
        "eigh": keep("eigh", lambda: torch.linalg.eigh(covariance)[1].flip(1)[:, :k]),
        "svd f32": keep("svd f32", lambda: torch.linalg.svd(features32, full_matrices=False)[2][:k].T.double()),
        "svd f64": keep("svd f64", lambda: torch.linalg.svd(features, full_matrices=False)[2][:k].T),
        "grow_basis randomized": keep("grow_basis randomized", lambda: grow_basis(
            covariance, empty, args.eps, "randomized", args.oversample, args.power_iters, seed=args.seed)),
        "grow_basis exact": keep("grow_basis exact", lambda: grow_basis(covariance, empty, args.eps, "exact")),
        "covariance F^T F": keep("covariance F^T F", lambda: _no_basis(features.T @ features)),
    }
    times = interleaved(methods, rounds, warmup=1)
    randomized = "svd_lowrank" if 2 * (k + args.oversample) < d else "eigh (fallback)"  # top_eigenpairs' rule
    solvers = {"randomized": randomized, "eigh": "eigh", "svd f32": "svd", "svd f64": "svd",
               "grow_basis randomized": "svd_lowrank x requests", "grow_basis exact": "eigh x requests",
               "covariance F^T F": "matmul"}
    rows = []
    for name, seconds in times.items():
        basis = results[name]
        rank = basis.shape[1] if basis is not None else None
        agreement = subspace_agreement(exact[:, :rank], basis) if basis is not None else None
        energy = captured_energy(covariance, basis, exact[:, :rank]) if basis is not None else None
        rows.append({
            "d": d, "n": n, "decay": args.decay, "eps": args.eps, "k": k, "method": name, "solver": solvers[name],
            "time_ms": median(seconds) * 1e3,
            "speedup_vs_svd_f32": paired_ratio(times["svd f32"], seconds)[0],
            "speedup_vs_svd_f64": paired_ratio(times["svd f64"], seconds)[0],
            "speedup_vs_eigh": paired_ratio(times["eigh"], seconds)[0],
            "agreement": agreement, "energy_ratio": energy, "rank": rank, "rounds": rounds,
        })
    return rows


def _no_basis(_: torch.Tensor) -> None:
    """The covariance row times the product only; it yields no basis to compare."""


def _sweep(d: int, n: int, rounds: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    features = decaying_features(n, d, args.decay, args.seed + d)
    covariance = features.T @ features
    values, vectors = torch.linalg.eigh(covariance)
    k = energy_rank(values.flip(0).clamp_min(0), args.eps)
    exact = vectors.flip(1)[:, :k]
    settings = {f"{o},{p}": (o, p) for o, p in SWEEP}
    bases: dict[str, torch.Tensor] = {}

    def solver(key: str, oversample: int, power_iters: int) -> Callable[[], None]:
        def call() -> None:
            bases[key] = top_eigenpairs(covariance, k, "randomized", oversample, power_iters, seed=args.seed)[1]

        return call

    times = interleaved({key: solver(key, o, p) for key, (o, p) in settings.items()}, rounds, warmup=1)
    return [{"d": d, "n": n, "k": k, "oversample": o, "power_iters": p, "time_ms": median(times[key]) * 1e3,
             "agreement": subspace_agreement(exact, bases[key]),
             "energy_ratio": captured_energy(covariance, bases[key], exact)} for key, (o, p) in settings.items()]


def _print_verdict(rows: list[dict[str, Any]], d: int) -> None:
    row = next(r for r in rows if r["d"] == d and r["method"] == "randomized")
    fast = row["speedup_vs_svd_f32"] >= TARGET_SPEEDUP and row["speedup_vs_svd_f64"] >= TARGET_SPEEDUP
    accurate = row["agreement"] >= TARGET_AGREEMENT
    print(f"target at d={d}: speedup vs svd f32 {row['speedup_vs_svd_f32']:.1f}x, vs svd f64 "
          f"{row['speedup_vs_svd_f64']:.1f}x ({'met' if fast else 'MISSED'}); agreement {row['agreement']:.4f} "
          f"({'met' if accurate else 'MISSED'})\n")


def _plot(rows: list[dict[str, Any]], path: Path, n: int) -> None:
    plt = pyplot()
    if plt is None:
        return
    dims = list(dict.fromkeys(row["d"] for row in rows))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    by_key = {(row["d"], row["method"]): row for row in rows}
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, method in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(dims))]
        bars = ax.bar(xs, [by_key[d, method]["time_ms"] for d in dims], width, label=method)
        for bar, d in zip(bars, dims, strict=True):
            agreement = by_key[d, method]["agreement"]
            if agreement is not None:
                ax.annotate(f"{agreement:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_yscale("log")
    ax.set_xticks(range(len(dims)), [f"d = {d}" for d in dims])
    ax.set_ylabel("time (ms, log scale); label: subspace agreement")
    ax.set_title(f"basis refresh solvers, n = {n} feature rows", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
