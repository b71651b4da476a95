"""What an evaluation run measured (`EvalResult`), and its files: result.json, matrix.csv, curve.csv and the
plots. Apart from the run (run.py) that fills it and the plots (plots.py) that draw plain numbers."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pegp_stream.evaluation.plots import plot_heatmap, plot_prequential


@dataclass
class EvalResult:
    """What one run measured. `matrix[i][j]`: accuracy on segment j's test data after training through
    segment i (None above the diagonal: not yet seen); a joint run has a single row (after training)."""

    name: str
    config: dict
    segments: int
    matrix: list[list[float | None]]
    average_accuracy: float
    forgetting: float | None
    backward_transfer: float | None
    prequential_accuracy: float | None
    curve: list[tuple[int, float, float]]  # (records, windowed, cumulative) prequential accuracy
    true_boundaries: list[int]  # stream positions where a new segment's data starts
    learner_boundaries: list[dict]  # {"position", "cause"} where the learner consolidated
    ranks: dict[str, int]  # basis rank per protected space at the end
    capacities: dict[str, int]  # the dimension each space's basis can reach (full: no plasticity left)
    records: int
    train_seconds: float
    eval_seconds: float
    test_samples: int
    segment_labels: list[list[str]] = field(default_factory=list)
    probe_matrix: list[list[float | None]] | None = None  # `EvalConfig.probe`: the refit readout's matrix
    probe_average_accuracy: float | None = None
    probe_forgetting: float | None = None
    refit_row: list[float] | None = None  # `EvalConfig.refit`: the last row through the refit head
    refit_average_accuracy: float | None = None

    @property
    def records_per_second(self) -> float:
        return self.records / self.train_seconds if self.train_seconds else math.nan

    def as_dict(self) -> dict:
        return {**asdict(self), "records_per_second": round(self.records_per_second, 2)}

    def write(self, out: str | Path, plots: bool = True) -> Path:
        """result.json, matrix.csv, curve.csv and (with `plots`) heatmap.png and prequential.png in `out`."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(self.as_dict(), indent=1) + "\n", encoding="utf-8")
        header = ",".join(f"seg{j}" for j in range(self.segments))
        rows = [",".join("" if v is None else f"{v:.4f}" for v in row) for row in self.matrix]
        (out / "matrix.csv").write_text("\n".join([f"after,{header}", *(
            f"{i},{row}" for i, row in zip(self.row_names(), rows, strict=True))]) + "\n", encoding="utf-8")
        (out / "curve.csv").write_text("records,windowed,cumulative\n" + "".join(
            f"{n},{w:.4f},{c:.4f}\n" for n, w, c in self.curve), encoding="utf-8")
        if plots:
            forgetting = f" F={self.forgetting:.3f}" if self.forgetting is not None else ""
            plot_heatmap(self.matrix, self.row_names(), f"{self.name}: A={self.average_accuracy:.3f}{forgetting}",
                         out / "heatmap.png")
            if self.curve:
                plot_prequential(self.curve, self.true_boundaries, [b["position"] for b in self.learner_boundaries],
                                 self.name, out / "prequential.png")
        return out

    def row_names(self) -> list[str]:
        return ["joint"] if len(self.matrix) == 1 and self.segments > 1 else [str(i) for i in range(len(self.matrix))]
