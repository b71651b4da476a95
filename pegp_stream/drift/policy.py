"""BoundaryPolicy: markers, operator requests and a detector, debounced, answered per sample in stream
order (the ordering contract is in the package docstring)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from pegp_stream.drift.config import DriftConfig
from pegp_stream.drift.detector import Signal, _scalar, _vector, build_detector
from pegp_stream.errors import CheckpointError
from pegp_stream.schema import to_config

Cause = Literal["marker", "operator", "detector"]
Marker = str | int
SEEN_MARKERS = 4096  # distinct markers remembered (oldest forgotten first): a seen marker never starts a segment


def _marker(marker: Any) -> Marker:
    if isinstance(marker, np.integer):
        return int(marker)
    if not isinstance(marker, str | int):
        raise TypeError(f"segment_marker must be a str, an int or None, got {type(marker).__name__}")
    return marker


class BoundaryPolicy:
    """Per sample, in stream order and before the sample is learned: is there a boundary here, and why?

    Causes, by priority when several meet at one sample:
    - "marker": `segment_marker` is new: never seen before in the stream (compared with ==, so "1" != 1; the
      first marker is not a boundary; None never is). A marker seen before does not start a segment: with
      several partitions, records of the previous segment can arrive after the first of the next one. A new
      marker within `min_marker_gap` samples of the last boundary becomes the current marker without a
      boundary (debounced, counted in `dropped_markers`): a producer flipping markers cannot make every
      record a consolidation.
    - "operator": `request()` was called; the next `observe` fires, bypassing `min_segment_length`.
    - "detector": the detector fired at this sample or is waiting: a firing within `cooldown` samples of the
      last boundary is dropped (the same change, seen again); one after the cooldown but before
      `min_segment_length` samples is deferred and fires at the first sample where the segment is long enough.
    Every boundary resets the detector and the sample count; the boundary sample (the first of the new
    segment) is then fed to the reset detector. The stream's start counts as a boundary for the debounce.

    >>> policy = BoundaryPolicy({"detector": "none", "min_segment_length": 2, "min_marker_gap": 2})
    >>> [policy.observe(m) for m in ["a", "a", None, "b", "b"]]
    [None, None, None, 'marker', None]
    >>> policy.request()
    >>> policy.observe("b"), policy.samples_since_boundary
    ('operator', 1)
    """

    def __init__(self, config: DriftConfig | Mapping[str, Any] | None = None) -> None:
        self.config = to_config(DriftConfig, config)
        self.detector = build_detector(self.config.detector)
        self.signal: Signal = self.detector.signal
        self._marker: Marker | None = None
        self._seen: dict[Marker, None] = {}  # insertion-ordered set of markers seen, at most SEEN_MARKERS
        self.dropped_markers = 0
        self._since = 0  # samples of the current segment already observed
        self._pending = self._requested = False
        self.samples = self.skipped = self.dropped = 0
        self.boundaries: dict[str, int] = {"marker": 0, "operator": 0, "detector": 0}

    @property
    def samples_since_boundary(self) -> int:
        return self._since

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

    def marker_starts(self, markers: Sequence[Marker | None]) -> list[int]:
        """Indices in `markers` (the next samples, in order) where a marker boundary would fall, if no other
        boundary came between (pure). A caller splits its runs there and calls `before` for each run."""
        current, seen, since, starts = self._marker, set(self._seen), self._since, []
        for i, marker in enumerate(markers):
            if marker is not None and self.config.markers and (marker := _marker(marker)) not in seen:
                if current is not None and since >= self.config.min_marker_gap:
                    starts.append(i)
                    since = 0
                current = marker
                seen.add(marker)
            since += 1
        return starts

    def before(self, segment_marker: Marker | None = None, rest: Sequence[Marker | None] = ()) -> Cause | None:
        """Ahead of learning a run whose first sample has `segment_marker` and whose other samples have the
        markers `rest` (taken in, never a boundary: `marker_starts` split there): "marker", "operator" or None.
        Call `consolidated(cause)` after acting on it."""
        cause = self._explicit_cause(segment_marker)
        for i, marker in enumerate(rest, start=1):
            self._marker_changed(marker, since=self._since + i)
        return cause

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

    def _marker_changed(self, marker: Marker | None, since: int | None = None) -> bool:
        """Take in a sample's marker: True when it starts a segment (new, and not debounced)."""
        if marker is None or not self.config.markers:
            return False
        marker = _marker(marker)
        if marker in self._seen:
            return False
        first = self._marker is None
        self._marker = marker
        self._seen[marker] = None
        if len(self._seen) > SEEN_MARKERS:
            del self._seen[next(iter(self._seen))]
        if first:
            return False
        if (self._since if since is None else since) < self.config.min_marker_gap:
            self.dropped_markers += 1
            return False
        return True

    def _signal_value(self, loss: Any, features: Any) -> float | np.ndarray | None:
        if self.signal == "none":
            return None
        value = _scalar(loss) if self.signal == "loss" else _vector(features)
        self.skipped += value is None
        return value

    def state_dict(self) -> dict[str, Any]:
        """JSON types only; a policy loaded from it continues identically."""
        return {
            "detector": self.detector.state_dict(), "marker": self._marker, "seen": list(self._seen),
            "dropped_markers": self.dropped_markers, "since": self._since,
            "pending": self._pending, "requested": self._requested, "samples": self.samples,
            "skipped": self.skipped, "dropped": self.dropped, "boundaries": dict(self.boundaries),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:  # read everything before changing anything: a state that does not fit leaves the policy as it was
            fields = (state["marker"], int(state["since"]), bool(state["pending"]), bool(state["requested"]),
                      int(state["samples"]), int(state["skipped"]), int(state["dropped"]))
            boundaries = {cause: int(state["boundaries"][cause]) for cause in ("marker", "operator", "detector")}
            detector = state["detector"]
            seen = {_marker(m): None for m in state.get("seen", [] if state["marker"] is None else [state["marker"]])}
            dropped_markers = int(state.get("dropped_markers", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"boundary policy state does not fit: missing or bad {exc!r}") from None
        self.detector.load_state_dict(detector)
        self._marker, self._since, self._pending, self._requested, self.samples, self.skipped, self.dropped = fields
        self.boundaries = boundaries
        self._seen, self.dropped_markers = seen, dropped_markers
