"""Task-free boundary detectors (River-style: ``update(value)`` per sample, True when a boundary fires)
and their registry."""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from pegp_stream.drift.config import (
    DETECTOR_CONFIGS,
    AdwinConfig,
    DetectorConfig,
    DriftConfig,
    FeatureShiftConfig,
    NoDetectorConfig,
    PageHinkleyConfig,
)
from pegp_stream.errors import CheckpointError, ConfigError

Signal = Literal["loss", "features", "none"]


# --------------------------------------------------------------------------------------------------------
# signals


def _scalar(value: Any) -> float | None:
    """One sample's loss as a float; None when missing or non-finite."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor | np.ndarray):
        if (value.size if isinstance(value, np.ndarray) else value.numel()) != 1:
            raise ValueError(f"a loss must be one number per sample, got shape {tuple(value.shape)}")
        value = value.item()  # a device sync for a GPU tensor: pass a batch's losses as one .tolist()
    x = float(value)
    return x if math.isfinite(x) else None


def _vector(value: Any) -> np.ndarray | None:
    """One sample's features as a fresh float64 vector (the caller's array is never written); None when
    missing or non-finite."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        array = value.detach().to("cpu", torch.float64).numpy().copy()
    else:
        array = np.array(value, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"features must be one 1-D vector per sample, got shape {array.shape}")
    return array if np.isfinite(array).all() else None


# --------------------------------------------------------------------------------------------------------
# detectors


class BoundaryDetector(ABC):
    """One task-free detector. `update(value)` consumes one sample's signal (`signal` says which: a float
    loss or a 1-D feature vector) and returns True when a boundary fires at that sample; the result is also
    left in `drift_detected`. A None or non-finite value is ignored (returns False, state unchanged). After
    firing, a detector has already restarted on its own (see each class): used alone, page_hinkley and
    feature_shift report a change once, adwin may report it again on later clock ticks while the old part of
    its window drains (a BoundaryPolicy resets the detector at the first report anyway). `state_dict()`
    holds only JSON types (lists, floats, ints); a detector loaded from it continues bitwise identically.
    Detectors are deterministic: no randomness, inputs never modified."""

    name: ClassVar[str]
    signal: ClassVar[Signal]

    drift_detected: bool = False

    @abstractmethod
    def update(self, value: Any) -> bool: ...

    @abstractmethod
    def reset(self) -> None:
        """Forget everything seen: behave like a freshly built detector."""

    @abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @abstractmethod
    def _load(self, state: Mapping[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.name, **self._state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.name:
            raise CheckpointError(f"detector state is for {state.get('kind')!r}, not {self.name!r}")
        backup = self._state()
        try:
            self._load(state)
        except (KeyError, TypeError, ValueError) as exc:
            self._load(backup)  # nothing half-loaded
            raise CheckpointError(f"{self.name} detector state does not fit: {exc!r}") from None
        self.drift_detected = False


class NoDetector(BoundaryDetector):
    """The disabled detector: never fires, holds nothing."""

    name = "none"
    signal = "none"

    def __init__(self, config: NoDetectorConfig | None = None) -> None:
        pass

    def update(self, value: Any) -> bool:
        return False

    def reset(self) -> None:
        pass

    def _state(self) -> dict[str, Any]:
        return {}

    def _load(self, state: Mapping[str, Any]) -> None:
        pass


class PageHinkley(BoundaryDetector):
    """Page-Hinkley on the loss (see `PageHinkleyConfig`); restarts from scratch after firing."""

    name = "page_hinkley"
    signal = "loss"

    def __init__(self, config: PageHinkleyConfig) -> None:
        self.delta, self.threshold = config.delta, config.threshold
        self.alpha = 1.0 if config.alpha is None else config.alpha
        self.reset()

    def reset(self) -> None:
        self._n, self._mean, self._sum, self._min = 0, 0.0, 0.0, 0.0
        self.statistic, self.drift_detected = 0.0, False

    def update(self, value: Any) -> bool:
        x = _scalar(value)
        if x is None:
            self.drift_detected = False
            return False
        self._n += 1
        self._mean += (x - self._mean) / self._n
        self._sum = self.alpha * self._sum + (x - self._mean - self.delta)
        self._min = min(self._min, self._sum)
        statistic = self._sum - self._min
        fired = statistic > self.threshold
        if fired:
            self.reset()
        self.statistic, self.drift_detected = statistic, fired
        return fired

    def _state(self) -> dict[str, Any]:
        return {"n": self._n, "mean": self._mean, "sum": self._sum, "min": self._min}

    def _load(self, state: Mapping[str, Any]) -> None:
        self._n, self._mean = int(state["n"]), float(state["mean"])
        self._sum, self._min = float(state["sum"]), float(state["min"])


class FeatureShift(BoundaryDetector):
    """Recent-window mean against a reference of the samples before it (see `FeatureShiftConfig`); a sample
    enters the reference when it leaves the recent window, so a fresh change is not yet in the reference.
    Restarts from scratch (including the feature dimension) after firing. State holds window x d floats."""

    name = "feature_shift"
    signal = "features"

    def __init__(self, config: FeatureShiftConfig) -> None:
        self.window, self.reference_window, self.threshold = config.window, config.reference_window, config.threshold
        self.reset()

    def reset(self) -> None:
        self._recent: np.ndarray | None = None  # ring buffer (window, d); row `_head` is the oldest once full
        self._ref_mean: np.ndarray | None = None
        self._ref_var: np.ndarray | None = None
        self._filled, self._head, self._ref_n = 0, 0, 0
        self.statistic, self.drift_detected = 0.0, False

    def update(self, value: Any) -> bool:
        x = _vector(value)
        if x is None:
            self.drift_detected = False
            return False
        if self._recent is None:
            self._recent = np.zeros((self.window, x.shape[0]))
            self._ref_mean, self._ref_var = np.zeros(x.shape[0]), np.zeros(x.shape[0])
        elif x.shape[0] != self._recent.shape[1]:
            raise ValueError(f"features have {x.shape[0]} dimensions, this detector has seen {self._recent.shape[1]}")
        if self._filled == self.window:
            self._absorb(self._recent[self._head])
        self._recent[self._head] = x
        self._head, self._filled = (self._head + 1) % self.window, min(self._filled + 1, self.window)
        statistic = self._distance() if self._ref_n >= self.reference_window else 0.0
        fired = statistic > self.threshold
        if fired:
            self.reset()
        self.statistic, self.drift_detected = statistic, fired
        return fired

    def _absorb(self, x: np.ndarray) -> None:
        # rate 1/n is Welford's exact mean and (population) variance; capped at 1/reference_window it forgets
        self._ref_n += 1
        rate = 1.0 / min(self._ref_n, self.reference_window)
        diff = x - self._ref_mean
        self._ref_mean = self._ref_mean + rate * diff
        self._ref_var = (1.0 - rate) * (self._ref_var + rate * diff * diff)

    def _distance(self) -> float:
        assert self._recent is not None and self._ref_var is not None, "update sets the arrays before the first call"
        var = self._ref_var + (1e-6 * float(self._ref_var.mean()) + 1e-12)  # floor: near-constant dimensions
        scale = var * (1.0 / self.window + 1.0 / min(self._ref_n, self.reference_window))
        return float(np.mean((self._recent.mean(axis=0) - self._ref_mean) ** 2 / scale))

    def _state(self) -> dict[str, Any]:
        arrays = (self._recent, self._ref_mean, self._ref_var)
        recent, mean, var = (None if a is None else a.tolist() for a in arrays)
        return {"recent": recent, "ref_mean": mean, "ref_var": var, "filled": self._filled,
                "head": self._head, "ref_n": self._ref_n}

    def _load(self, state: Mapping[str, Any]) -> None:
        recent = state["recent"]
        if recent is not None and len(recent) != self.window:
            raise ValueError(f"the state's recent window has {len(recent)} rows; this one's window is {self.window}")
        self._recent = None if recent is None else np.array(recent, dtype=np.float64).reshape(self.window, -1)
        self._ref_mean = None if recent is None else np.array(state["ref_mean"], dtype=np.float64)
        self._ref_var = None if recent is None else np.array(state["ref_var"], dtype=np.float64)
        self._filled, self._head, self._ref_n = int(state["filled"]), int(state["head"]), int(state["ref_n"])


class Adwin(BoundaryDetector):
    """ADWIN2 on the loss, following MOA's ADWIN.java (see `AdwinConfig`). Rows of an exponential histogram:
    row i holds up to 5 buckets of 2**i samples, oldest first, each [sum, sum of squared deviations]. After
    firing it keeps its (already shrunk) window: dropping the old part is ADWIN's own restart."""

    name = "adwin"
    signal = "loss"
    MAX_BUCKETS = 5  # per row; MOA's M
    MIN_SUBWINDOW = 5  # neither side of a split may be shorter
    GRACE = 10  # no test while the window is this short

    def __init__(self, config: AdwinConfig) -> None:
        self.delta, self.clock, self.direction = config.delta, config.clock, config.direction
        self.reset()

    @property
    def width(self) -> int:
        return self._width

    def reset(self) -> None:
        self._rows: list[list[list[float]]] = [[]]
        self._width, self._total, self._variance, self._time = 0, 0.0, 0.0, 0
        self.drift_detected = False

    def update(self, value: Any) -> bool:
        x = _scalar(value)
        fired = False
        if x is not None:
            self._time += 1
            self._insert(x)
            if self._time % self.clock == 0 and self._width > self.GRACE:
                fired = self._shrink()
        self.drift_detected = fired
        return fired

    def _insert(self, x: float) -> None:
        if self._width > 0:
            self._variance += self._width * (x - self._total / self._width) ** 2 / (self._width + 1)
        self._total += x
        self._width += 1
        self._rows[0].append([x, 0.0])
        for i, row in enumerate(self._rows):  # compress: merge the two oldest buckets of a full row upwards
            if len(row) <= self.MAX_BUCKETS:
                break
            if i + 1 == len(self._rows):
                self._rows.append([])
            size = 2**i
            (t1, v1), (t2, v2) = row[0], row[1]
            self._rows[i + 1].append([t1 + t2, v1 + v2 + size * size * (t1 / size - t2 / size) ** 2 / (2 * size)])
            del row[:2]

    def _shrink(self) -> bool:
        """Drop the oldest bucket while some split is significant; True when a reported change was found."""
        fired, cut = False, True
        while cut:
            cut = False
            n0, u0, n1, u1 = 0, 0.0, self._width, self._total
            for i in range(len(self._rows) - 1, -1, -1):  # oldest row first, oldest bucket first
                size = 2**i
                for k, (total, _) in enumerate(self._rows[i]):
                    n0, u0, n1, u1 = n0 + size, u0 + total, n1 - size, u1 - total
                    if i == 0 and k == len(self._rows[0]) - 1:
                        break
                    older, newer = u0 / n0, u1 / n1
                    if min(n0, n1) > self.MIN_SUBWINDOW + 1 and self._significant(n0, n1, older - newer):
                        fired |= self.direction == "both" or newer > older
                        self._delete_oldest()
                        cut = True
                        break
                if cut:
                    break
        return fired

    def _significant(self, n0: int, n1: int, difference: float) -> bool:
        dd = math.log(2.0 * math.log(self._width) / self.delta)
        variance = max(self._variance / self._width, 0.0)
        m = 1.0 / (n0 - self.MIN_SUBWINDOW + 1) + 1.0 / (n1 - self.MIN_SUBWINDOW + 1)
        return abs(difference) > math.sqrt(2.0 * m * variance * dd) + 2.0 / 3.0 * dd * m

    def _delete_oldest(self) -> None:
        size = 2 ** (len(self._rows) - 1)
        total, variance = self._rows[-1].pop(0)
        self._width -= size
        self._total -= total
        self._variance -= variance + size * self._width * (total / size - self._total / self._width) ** 2 / (
            size + self._width
        )
        if not self._rows[-1] and len(self._rows) > 1:
            self._rows.pop()

    def _state(self) -> dict[str, Any]:
        return {"rows": [[list(b) for b in row] for row in self._rows], "width": self._width,
                "total": self._total, "variance": self._variance, "time": self._time}

    def _load(self, state: Mapping[str, Any]) -> None:
        self._rows = [[[float(t), float(v)] for t, v in row] for row in state["rows"]] or [[]]
        self._width, self._total = int(state["width"]), float(state["total"])
        self._variance, self._time = float(state["variance"]), int(state["time"])


# --------------------------------------------------------------------------------------------------------
# registry

# Any: a factory takes its own config class, the one registered under its name (build_detector passes only that).
DetectorFactory = Callable[[Any], BoundaryDetector]
_REGISTRY: dict[str, DetectorFactory] = {}
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


def register_detector(name: str, factory: DetectorFactory, config: type[DetectorConfig] | None = None) -> None:
    """Register a detector under `name`. `factory(config)` builds it (a `BoundaryDetector` whose `name` is
    `name`); its config class is `config` (whose `kind` defaults to `name`) or already in DETECTOR_CONFIGS."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"detector name {name!r} must be lower_snake_case (letters, digits, underscores)")
    if name in _REGISTRY:
        raise ValueError(f"detector {name!r} is already registered")
    if not callable(factory):
        raise TypeError(f"detector {name!r}: factory must be callable, got {type(factory).__name__}")
    if config is not None:
        if not (isinstance(config, type) and issubclass(config, DetectorConfig)):
            raise TypeError(f"detector {name!r}: config must be a DetectorConfig subclass")
        if config.model_fields["kind"].default != name:
            raise ValueError(f"detector {name!r}: its config's kind must default to {name!r}")
        if DETECTOR_CONFIGS.get(name, config) is not config:
            raise ValueError(f"detector {name!r} already has the config class {DETECTOR_CONFIGS[name].__name__}")
        DETECTOR_CONFIGS[name] = config
    elif name not in DETECTOR_CONFIGS:
        raise ValueError(f"detector {name!r} has no config class: pass config= or add it to DETECTOR_CONFIGS")
    _REGISTRY[name] = factory


def detectors() -> list[str]:
    return sorted(_REGISTRY)


def build_detector(config: DetectorConfig | DriftConfig) -> BoundaryDetector:
    """The registered detector for `config.kind` (or a DriftConfig's `detector`)."""
    if isinstance(config, DriftConfig):
        config = config.detector
    if config.kind not in _REGISTRY:
        valid = ", ".join(detectors())
        raise ConfigError("drift.detector", f"unknown detector {config.kind!r}; valid detectors: {valid}")
    detector = _REGISTRY[config.kind](config)
    if not isinstance(detector, BoundaryDetector) or detector.name != config.kind:
        raise TypeError(f"detector factory {config.kind!r} must return a BoundaryDetector named {config.kind!r}")
    return detector


register_detector("none", NoDetector)
register_detector("page_hinkley", PageHinkley)
register_detector("feature_shift", FeatureShift)
register_detector("adwin", Adwin)
