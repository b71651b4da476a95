"""BoundaryPolicy: markers, operator requests and a detector, debounced, answered per sample in stream
order (the ordering contract is in the package docstring)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from ..errors import CheckpointError
from .config import DriftConfig
from .detector import Signal, _scalar, _vector, build_detector

Cause = Literal["marker", "operator", "detector"]
Marker = str | int


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
        from ..config import to_config  # here, not at the top: pegp_stream.config imports this package

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
