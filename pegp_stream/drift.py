"""Drift boundaries for task-free streaming (pegp-method.md section 4): explicit segment markers, operator
requests and registered detectors, debounced by a minimum segment length and a cooldown.

A detector is a small River-style object: ``update(value)`` takes one sample's signal and returns True when a
boundary fires at that sample (also left in ``drift_detected``). ``BoundaryPolicy`` combines it with markers
and operator requests and answers, per sample, the cause of a boundary at that sample or None.

Ordering contract (the daemon's side). A boundary at sample i means: consolidate, then learn sample i as the
first sample of the new segment. So ``BoundaryPolicy.observe`` is called once per sample, in stream order,
before that sample is learned. The signals it sees:

- ``features``: the pooled feature vector of the frozen backbone for this sample. It does not depend on the
  learner's state, so it is available before learning. (Features taken after the PET modules have been
  tuned move as the learner adapts; ``feature_shift`` can then fire on the learner's own progress.)
- ``loss``: the prequential loss, i.e. the loss of the prediction made *before* this sample is learned. The
  learner computes it in the same forward as the update, so the caller passes the pre-update loss. A daemon
  that learns in batches either runs the prediction forward first and splits the batch at i, or applies a
  detector boundary at the start of the next batch (an extra delay of less than one batch, small next to
  the detector's own delay). Markers and operator requests need no forward and can always split exactly.

A missing signal (None, e.g. a rejected row) or a non-finite one is not fed to the detector; the policy
counts it in ``skipped`` (export it: ``skipped == samples`` means the detector is not wired up).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationInfo, field_validator

from .errors import CheckpointError, ConfigError

Cause = Literal["marker", "operator", "detector"]
Signal = Literal["loss", "features", "none"]
Marker = str | int
Positive = Annotated[int, Field(ge=1)]


# --------------------------------------------------------------------------------------------------------
# configuration (own frozen base: config.py will import this module to nest `drift:`, so no import back)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DetectorConfig(_Frozen):
    """Base of every detector's config; `kind` selects the registered detector."""

    kind: str


class NoDetectorConfig(DetectorConfig):
    """No task-free detection: boundaries come from markers and operator requests only."""

    kind: Literal["none"] = "none"


class PageHinkleyConfig(DetectorConfig):
    """Page-Hinkley test for an increase of the mean of the per-sample loss.

    Statistic: m_t = alpha * m_{t-1} + (x_t - mean_t - delta), PH_t = m_t - min(0, m_1..m_t); fires when
    PH_t > threshold. Both delta and threshold are in loss units, so they depend on the loss's scale. On a
    stationary stream of standard deviation s the false-alarm rate falls like exp(-2 * delta * threshold / s^2);
    a rise of the mean by D is found after about threshold / (D - delta) samples. The defaults (delta 0.05,
    threshold 25) give exponent 250 at s = 0.1 and about 28 at s = 0.3 (the spread of per-sample cross-entropy
    within a segment of the tiny test ViT), and find a rise of 1.0 in about 27 samples: a quiet detector that
    only reacts to the jump new classes cause, not to the slow wobble of learning (a falling loss never fires).
    """

    kind: Literal["page_hinkley"] = "page_hinkley"
    delta: float = Field(0.05, ge=0.0, description="tolerated rise of the mean (loss units) before evidence builds")
    threshold: float = Field(25.0, gt=0.0, description="lambda: evidence (loss units x samples) needed to fire")
    alpha: float | None = Field(
        None, gt=0.0, le=1.0, description="forgetting factor on the cumulative sum; None = 1 (no forgetting)"
    )


class FeatureShiftConfig(DetectorConfig):
    """Mean shift of the frozen backbone's pooled feature vector.

    The mean of the last `window` samples is compared with a reference mean and variance of the samples before
    them (Welford over the first `reference_window` samples, then exponential forgetting with that horizon).
    Statistic: the mean over dimensions of z_j^2, z_j = (recent_j - ref_j) / sqrt(var_j (1/window + 1/n_ref)),
    i.e. a diagonal Hotelling T^2 divided by d. Under no change it averages 1 whatever d is; its spread is
    sqrt(2/d) for independent dimensions and grows towards sqrt(2) as dimensions become correlated. A shift of
    RMS size r (in per-dimension standard deviations) reaches the threshold after about
    sqrt((threshold - 1) * window) / r samples and is undetectable when window * r^2 < threshold - 1.
    Defaults (32, 256, 6.0): a shift of r = 1 is found in ~13 samples, r >= 0.4 is detectable, and a stationary
    stream is quiet for effective dimensions down to ~8. The detector needs window + reference_window samples
    after each reset before it can fire, so segments shorter than that are not split by it.
    """

    kind: Literal["feature_shift"] = "feature_shift"
    window: Positive = Field(32, description="samples in the recent window whose mean is tested")
    reference_window: int = Field(
        256, ge=2, description="horizon of the reference mean/variance; also the warm-up after each reset"
    )
    threshold: float = Field(6.0, gt=0.0, description="fire when the mean squared z-score exceeds this")

    @field_validator("reference_window")
    @classmethod
    def _reference_not_shorter(cls, value: int, info: ValidationInfo) -> int:
        window = info.data.get("window")
        if window is not None and value < window:
            raise ValueError(f"reference_window ({value}) must be >= window ({window})")
        return value


class AdwinConfig(DetectorConfig):
    """ADWIN (Bifet and Gavalda 2007, the ADWIN2 exponential histogram as in MOA) on the per-sample loss.

    The window keeps every sample since the last change; every `clock` samples each split into an older and a
    newer part is tested (Bernstein bound at confidence `delta`) and the oldest buckets are dropped while a
    split is significant. The window adapts in both directions; with direction "increase" only a rise of the
    mean is reported, so the falling loss of normal learning shrinks the window without firing. Adaptive and
    scale-free, but a boundary can only fire on a multiple of `clock` samples after a reset.
    """

    kind: Literal["adwin"] = "adwin"
    delta: float = Field(0.002, gt=0.0, lt=1.0, description="confidence: smaller = fewer false alarms, slower")
    clock: Positive = Field(32, description="test for a change every this many samples")
    direction: Literal["increase", "both"] = Field("increase", description="which mean changes fire a boundary")


DETECTOR_CONFIGS: dict[str, type[DetectorConfig]] = {
    "none": NoDetectorConfig,
    "page_hinkley": PageHinkleyConfig,
    "feature_shift": FeatureShiftConfig,
    "adwin": AdwinConfig,
}


class DriftConfig(_Frozen):
    """Where segments end: explicit markers, operator requests, and an optional task-free detector.

    The default is markers only (detector "none"): a detector's thresholds depend on the deployed backbone's
    loss scale and feature geometry, so it is switched on per deployment. min_segment_length 100 keeps a
    segment's covariance from resting on a handful of samples; cooldown 50 keeps a detector from reporting,
    just after a marker, the change the marker already announced (blurry boundaries), at the price of
    missing a second change within 50 samples."""

    detector: SerializeAsAny[DetectorConfig] = Field(
        default_factory=NoDetectorConfig,
        description="task-free detector: a kind name or a mapping with 'kind' (none, page_hinkley, "
        "feature_shift, adwin) and its parameters; 'none' relies on markers and operator requests",
    )
    min_segment_length: Positive = Field(
        100, description="no detector boundary before this many samples since the last boundary (it waits)"
    )
    cooldown: int = Field(
        50, ge=0, description="after any boundary the reset detector is fed but its firings are dropped "
        "for this many samples, while it rebuilds its reference",
    )
    markers: bool = Field(True, description="honour explicit segment markers (a change is a boundary)")

    @field_validator("detector", mode="before")
    @classmethod
    def _detector_by_kind(cls, value: Any) -> Any:
        if isinstance(value, DetectorConfig):
            return value
        if isinstance(value, str):
            value = {"kind": value}
        if not isinstance(value, Mapping):
            raise ValueError("must be a detector name or a mapping with a 'kind'")
        kind = value.get("kind", "none")
        if kind not in DETECTOR_CONFIGS:
            raise ValueError(f"unknown detector {kind!r}; valid detectors: {', '.join(sorted(DETECTOR_CONFIGS))}")
        return DETECTOR_CONFIGS[kind].model_validate(dict(value, kind=kind))


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

DetectorFactory = Callable[[DetectorConfig], BoundaryDetector]
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


# --------------------------------------------------------------------------------------------------------
# policy


def _marker(marker: Any) -> Marker:
    if isinstance(marker, np.integer):
        return int(marker)
    if not isinstance(marker, str | int):
        raise TypeError(f"segment_marker must be a str, an int or None, got {type(marker).__name__}")
    return marker


class BoundaryPolicy:
    """Per sample, in stream order and before the sample is learned: is there a boundary here, and why?

    Causes, by priority when several meet at one sample:
    - "marker": `segment_marker` differs from the previous non-None marker (compared with ==, so "1" != 1;
      the first marker is not a boundary; None never is). Markers are ground truth: always fire.
    - "operator": `request()` was called; the next `observe` fires, bypassing `min_segment_length`.
    - "detector": the detector fired at this sample or is waiting: a firing within `cooldown` samples of the
      last boundary is dropped (the same change, seen again); one after the cooldown but before
      `min_segment_length` samples is deferred and fires at the first sample where the segment is long enough.
    Every boundary resets the detector and the sample count; the boundary sample (the first of the new
    segment) is then fed to the reset detector. The stream's start counts as a boundary for the debounce.

    >>> policy = BoundaryPolicy({"detector": "none", "min_segment_length": 2})
    >>> [policy.observe(m) for m in ["a", "a", None, "b", "b"]]
    [None, None, None, 'marker', None]
    >>> policy.request()
    >>> policy.observe("b"), policy.samples_since_boundary
    ('operator', 1)
    """

    def __init__(self, config: DriftConfig | Mapping[str, Any] | None = None) -> None:
        from .config import to_config  # here, not at the top: config.py imports this module

        self.config = to_config(DriftConfig, config)
        self.detector = build_detector(self.config.detector)
        self.signal: Signal = self.detector.signal
        self._marker: Marker | None = None
        self._since = 0  # samples of the current segment already observed
        self._pending = self._requested = False
        self.samples = self.skipped = self.dropped = 0
        self.boundaries: dict[str, int] = {"marker": 0, "operator": 0, "detector": 0}

    @property
    def samples_since_boundary(self) -> int:
        return self._since

    @property
    def last_marker(self) -> Marker | None:
        """The last non-None segment marker seen (markers are compared with it)."""
        return self._marker

    def request(self) -> None:
        """An operator asks for a boundary: the next `observe` returns "operator" (or "marker")."""
        self._requested = True

    def observe(
        self, segment_marker: Marker | None = None, loss: Any = None, features: Any = None
    ) -> Cause | None:
        """The cause of a boundary at this sample (consolidate before learning it), or None. `loss` is the
        pre-update prequential loss (float or 1-element tensor); `features` the frozen backbone's pooled
        vector (1-D array or tensor); only the one the detector's `signal` names is read."""
        value = self._signal_value(loss, features)
        cause = self._explicit_cause(segment_marker)
        if cause is None:
            self._detect(value)
            cause = "detector" if self._pending and self._since >= self.config.min_segment_length else None
        if cause is not None:
            self.consolidated(cause)
            if value is not None:  # the boundary sample opens the new segment (a firing here is ignored)
                self.detector.update(value)
        self._since += 1
        self.samples += 1
        return cause

    # split-phase use, for a caller that learns a run of samples in one step: `before(marker)` ahead of the
    # run (explicit causes split exactly), `after(loss, features)` per learned sample (a detector boundary then
    # falls after the sample that completed it, i.e. at the end of the run), `consolidated(cause)` once the
    # boundary is applied. Same state, same debounce rules as `observe`.

    def marker_changes(self, previous: Marker | None, current: Marker | None) -> bool:
        """Whether `current` starts a new segment after `previous` (pure; None never changes anything)."""
        if previous is None or current is None or not self.config.markers:
            return False
        return _marker(previous) != _marker(current)

    def before(self, segment_marker: Marker | None = None) -> Cause | None:
        """Ahead of learning a run whose first sample has `segment_marker`: "marker", "operator" or None.
        Call `consolidated(cause)` after acting on it."""
        return self._explicit_cause(segment_marker)

    def after(self, loss: Any = None, features: Any = None) -> Cause | None:
        """After learning one sample (its pre-update loss and features): "detector" when a boundary is due
        before the next sample, else None. Stays due until `consolidated` is called."""
        self._detect(self._signal_value(loss, features))
        self._since += 1
        self.samples += 1
        return "detector" if self._pending and self._since >= self.config.min_segment_length else None

    def consolidated(self, cause: Cause) -> None:
        """A boundary was applied: count it, reset the detector, start the new segment's count."""
        self.boundaries[cause] += 1
        self.detector.reset()
        self._since, self._pending, self._requested = 0, False, False

    def _explicit_cause(self, marker: Marker | None) -> Cause | None:
        if self._marker_changed(marker):
            return "marker"
        return "operator" if self._requested else None

    def _detect(self, value: float | np.ndarray | None) -> None:
        fired = value is not None and self.detector.update(value)
        if fired and self._since < self.config.cooldown:
            self.dropped += 1
        else:
            self._pending |= fired

    def _marker_changed(self, marker: Marker | None) -> bool:
        if marker is None or not self.config.markers:
            return False
        marker = _marker(marker)
        changed = self._marker is not None and marker != self._marker
        self._marker = marker
        return changed

    def _signal_value(self, loss: Any, features: Any) -> float | np.ndarray | None:
        if self.signal == "none":
            return None
        value = _scalar(loss) if self.signal == "loss" else _vector(features)
        self.skipped += value is None
        return value

    def state_dict(self) -> dict[str, Any]:
        """JSON types only; a policy loaded from it continues identically."""
        return {
            "detector": self.detector.state_dict(), "marker": self._marker, "since": self._since,
            "pending": self._pending, "requested": self._requested, "samples": self.samples,
            "skipped": self.skipped, "dropped": self.dropped, "boundaries": dict(self.boundaries),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:  # read everything before changing anything: a state that does not fit leaves the policy as it was
            fields = (state["marker"], int(state["since"]), bool(state["pending"]), bool(state["requested"]),
                      int(state["samples"]), int(state["skipped"]), int(state["dropped"]))
            boundaries = {cause: int(state["boundaries"][cause]) for cause in ("marker", "operator", "detector")}
            detector = state["detector"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"boundary policy state does not fit: missing or bad {exc!r}") from None
        self.detector.load_state_dict(detector)
        self._marker, self._since, self._pending, self._requested, self.samples, self.skipped, self.dropped = fields
        self.boundaries = boundaries


__all__ = [
    "DETECTOR_CONFIGS", "Adwin", "AdwinConfig", "BoundaryDetector", "BoundaryPolicy", "Cause", "DetectorConfig",
    "DriftConfig", "FeatureShift", "FeatureShiftConfig", "NoDetector", "NoDetectorConfig", "PageHinkley",
    "PageHinkleyConfig", "build_detector", "detectors", "register_detector",
]
