"""Exceptions raised by pegp-stream. Every error the package raises on purpose derives from `PegpError`."""

from __future__ import annotations

from typing import Any


class PegpError(Exception):
    """Root of every error pegp-stream raises on purpose."""


class ConfigError(PegpError, ValueError):
    """A configuration value is invalid. The message names the field (dotted path) and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class CheckpointError(PegpError):
    """A checkpoint or backbone weight file cannot be read or does not fit the model."""


class LabelCapacityError(PegpError):
    """A new label arrived but the classifier head is already at its configured capacity."""


class StateMismatchError(PegpError):
    """A learned state was made under a config whose layout differs from this learner's (another backbone, its
    weights, PET or head), so loading it would change predictions silently. Raised before anything is loaded.
    `differences` maps each differing config field (dotted, from `learner.`) to (checkpoint's, config's) value."""

    def __init__(self, differences: dict[str, tuple[Any, Any]]) -> None:
        self.differences = differences
        found = "; ".join(f"{field}: checkpoint has {old!r}, config has {new!r}"
                          for field, (old, new) in differences.items())
        super().__init__(f"{found} (use the config the state was made with, or start without it)")
