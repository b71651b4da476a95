"""PNG plots of evaluation results (matplotlib, from the `bench` extra: `pip install pegp-stream[bench]`).
The plots take plain numbers, not result objects: this module imports no result type (result.py draws
its own plots through it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pegp_stream.errors import PegpError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PegpError("plots need matplotlib: pip install 'pegp-stream[bench]' (or pass --no-plots)") from None
    return plt


def plot_heatmap(matrix: Sequence[Sequence[float | None]], row_names: Sequence[str], title: str,
                 path: str | Path) -> Path:
    """The accuracy matrix R[i, j] (rows: after segment i, named by `row_names`; columns: test data of segment
    j, one per segment; None where not measured)."""
    plt = _pyplot()
    rows, segments = len(matrix), len(matrix[0]) if matrix else 0
    values = [[float("nan") if v is None else v for v in row] for row in matrix]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * segments, 1.0 + 0.5 * rows))
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if v == v:  # not NaN
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(segments))
    ax.set_yticks(range(rows), row_names)
    ax.set_xlabel("test data of segment j")
    ax.set_ylabel("after training through segment i")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_prequential(curve: Sequence[tuple[int, float, float]], true_boundaries: Sequence[int],
                     learned: Sequence[int], title: str, path: str | Path) -> Path:
    """Windowed and cumulative prequential accuracy over the stream (`curve`: records, windowed, cumulative);
    true segment starts as dotted lines, the learner's boundaries (`learned`, stream positions) as triangles
    (markers, or what the detector found)."""
    plt = _pyplot()
    records = [p[0] for p in curve]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(records, [p[1] for p in curve], lw=1.2, label="prequential (window)")
    ax.plot(records, [p[2] for p in curve], lw=1.2, label="prequential (cumulative)")
    for i, position in enumerate(true_boundaries):
        ax.axvline(position, color="grey", ls=":", lw=0.8, label="true segment start" if i == 0 else None)
    if learned:
        ax.plot(learned, [1.02] * len(learned), "v", color="crimson", ms=5, clip_on=False,
                label="learner boundary")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("records learned")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_forgetting(rows: Sequence[Mapping], path: str | Path, title: str = "forgetting per paradigm") -> Path:
    """Grouped bars: forgetting (mean, error bar = spread over seeds) per paradigm, one bar per variant.
    `rows`: mappings with paradigm, variant, forgetting_mean, forgetting_std."""
    plt = _pyplot()
    paradigms = list(dict.fromkeys(r["paradigm"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    width = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(paradigms), 3.4))
    for k, variant in enumerate(variants):
        cells = {r["paradigm"]: r for r in rows if r["variant"] == variant}
        xs = [i + (k - (len(variants) - 1) / 2) * width for i, p in enumerate(paradigms) if p in cells]
        ys = [cells[p]["forgetting_mean"] for p in paradigms if p in cells]
        errs = [cells[p]["forgetting_std"] for p in paradigms if p in cells]
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=variant)
    ax.set_xticks(range(len(paradigms)), paradigms)
    ax.set_ylabel("forgetting F (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
