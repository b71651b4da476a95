"""Atomic checkpoints of the whole learned state with stream offsets.

One checkpoint is one safetensors file: the tensors of the nested state under path-like keys, and the
rest of the state as JSON in the file's metadata, with a sha256 over both. Loading executes no code
(safetensors plus json). Writes go to a temporary file that is fsynced and renamed, then the directory
is fsynced, so a crash leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from pegp_stream.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)
_NAME = re.compile(r"^ckpt-(\d{12})\.safetensors$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    sequence: int
    state: dict[str, Any]


class CheckpointStore:
    """Numbered checkpoints in `directory`; keeps the newest `keep`."""

    def __init__(self, directory: str | Path, keep: int = 3, setting: str = "checkpoint.dir") -> None:
        """Create `directory` if needed; a path that cannot be a directory (a file on the way, no permission)
        raises ConfigError naming `setting`, the config key or option the directory came from."""
        self.directory = Path(directory)
        self.keep = keep
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # FileExistsError, NotADirectoryError, PermissionError, read-only file system
            reason = f"cannot create directory {str(self.directory)!r}: {exc.strerror or exc}"
            raise ConfigError(setting, reason) from None

    def remove_interrupted_writes(self) -> None:
        """Delete *.partial files, left by a write a crash or a full disk interrupted. Only the single writer
        may call it, before it writes: a reader (a serving replica) would delete the write in progress."""
        for stale in self.directory.glob("*.partial"):
            log.warning("removing %s, left by an interrupted checkpoint write", stale)
            stale.unlink(missing_ok=True)

    @staticmethod
    def sequence_of(path: Path) -> int:
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"{path.name} is not a checkpoint file name")
        return int(match.group(1))

    def paths(self) -> list[Path]:
        """Existing checkpoint files, oldest first."""
        return sorted(p for p in self.directory.iterdir() if _NAME.match(p.name))

    def save(self, state: dict[str, Any]) -> Path:
        """Write `state` durably as the next checkpoint and prune old ones; returns its path."""
        existing = self.paths()
        sequence = self.sequence_of(existing[-1]) + 1 if existing else 1
        path = self.directory / f"ckpt-{sequence:012d}.safetensors"
        partial = path.with_name(path.name + ".partial")
        data = encode_state(state)
        try:
            with open(partial, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            partial.replace(path)
        except OSError:
            partial.unlink(missing_ok=True)  # a full disk must not keep the half-written file
            raise
        _fsync_directory(self.directory)
        for old in self.paths()[: -self.keep]:
            try:
                old.unlink(missing_ok=True)
            except OSError as exc:  # e.g. a directory with a checkpoint's name: the new checkpoint stands
                log.warning("cannot remove old checkpoint %s: %s", old, exc)
        return path

    def load_latest(self) -> Checkpoint | None:
        """The newest checkpoint that reads back intact; a corrupt one is logged and skipped."""
        return next(self.intact(), None)

    def intact(self) -> Iterator[Checkpoint]:
        """Checkpoints that read back intact, newest first; each unreadable one is logged, named, and skipped.
        A caller that cannot use one (its state does not apply) moves on to the next the same way."""
        for path in reversed(self.paths()):
            try:
                state = decode_state(path.read_bytes())
            except (CheckpointError, OSError) as exc:  # OSError: e.g. a directory with a checkpoint's name
                log.error("checkpoint %s is corrupt, trying the previous one: %s", path, exc)
                continue
            yield Checkpoint(path, self.sequence_of(path), state)


def encode_state(state: dict[str, Any]) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, "", tensors)
    body = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    metadata = {"format": "pegp-stream/1", "state": body, "sha256": _digest(body, tensors)}
    return save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def decode_state(data: bytes) -> dict[str, Any]:
    try:
        tensors = load_tensors(data)
        metadata = _metadata(data)
    except Exception as exc:  # safetensors raises several error types on damaged bytes
        raise CheckpointError(f"unreadable checkpoint: {exc}") from None
    if metadata.get("format") != "pegp-stream/1" or "state" not in metadata:
        raise CheckpointError("not a pegp-stream checkpoint")
    if _digest(metadata["state"], tensors) != metadata.get("sha256"):
        raise CheckpointError("checksum mismatch")
    try:
        state = _unflatten(json.loads(metadata["state"]), tensors)
    except (ValueError, KeyError, TypeError) as exc:  # JSON that parses and matches its digest, but is no state
        raise CheckpointError(f"malformed state: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"malformed state: a {type(state).__name__}, not a mapping")
    return state


def recorded_digest(path: Path) -> str:
    """The sha256 a checkpoint file records in its header, read without its tensors; not verified here
    (`decode_state` verifies it)."""
    with open(path, "rb") as handle:
        size = handle.read(8)
        return _metadata(size + handle.read(int.from_bytes(size, "little"))).get("sha256", "")


def _metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors buffer (an 8-byte little-endian length, then a JSON header)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def _digest(body: str, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(body.encode())
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _flatten(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON tree of `value`, tensors moved to `tensors` under their path; dicts with non-string keys and
    tuples are tagged so the round trip gives back the same Python types."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value
        return {"__tensor__": path}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _flatten(v, f"{path}/{k}", tensors) for k, v in value.items()}
        return {"__items__": [[k, _flatten(v, f"{path}/{i}", tensors)] for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise CheckpointError(f"cannot store {type(value).__name__} at {path or '/'}")


def _unflatten(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__items__" in tree:
            return {_key(k): _unflatten(v, tensors) for k, v in tree["__items__"]}
        if "__tuple__" in tree:
            return tuple(_unflatten(v, tensors) for v in tree["__tuple__"])
        return {k: _unflatten(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unflatten(v, tensors) for v in tree]
    return tree


def _key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
