"""Exceptions raised by pegp-stream. Every error the package raises on purpose derives from `PegpError`."""

from __future__ import annotations


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


class StateMismatchError(CheckpointError):
    """A saved state was made under another configuration (backbone, PET layout): the message names the field."""
