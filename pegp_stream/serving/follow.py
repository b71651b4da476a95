"""Serving replicas: a read-only server that follows the learner's checkpoints and serves the same API.

It never learns: it rebuilds the learner from the first checkpoint's own config once, then loads each newer
checkpoint as it appears and publishes it as a snapshot. Its model version is the learner's update count at
that checkpoint, so clients of several replicas can compare versions.

Checkpoints come from the learner's checkpoint directory (a shared volume) or from the learner's HTTP server
(`GET /v1/checkpoint/latest`), which needs no volume shared between machines. Either way a checkpoint is
verified by `decode_state`, the check a load from disk makes; one that fails it is logged and skipped, and
the current snapshot stays.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pegp_stream.checkpoint import CheckpointStore, decode_state
from pegp_stream.core.learner import Learner, create_learner
from pegp_stream.errors import CheckpointError
from pegp_stream.serving.snapshot import SnapshotPublisher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Followed:
    name: str
    sequence: int
    state: dict[str, Any]


class DirectoryCheckpoints:
    """The newest intact checkpoint in the learner's checkpoint directory."""

    def __init__(self, directory: str | Path) -> None:
        self.store = CheckpointStore(directory)
        self.sequence = 0
        self.where = str(self.store.directory)

    def fetch_new(self) -> Followed | None:
        """The newest intact checkpoint if it is newer than the last one returned, else None."""
        paths = self.store.paths()
        if not paths or self.store.sequence_of(paths[-1]) <= self.sequence:
            return None
        checkpoint = self.store.load_latest()
        if checkpoint is None or checkpoint.sequence <= self.sequence:
            return None
        self.sequence = checkpoint.sequence
        return Followed(checkpoint.path.name, checkpoint.sequence, checkpoint.state)


class LearnerCheckpoints:
    """The newest checkpoint offered by the learner's HTTP server at `url` (http or https).

    A poll sends the last accepted checkpoint's ETag as If-None-Match, so while nothing changed the learner
    answers 304 without the file. A download that fails `decode_state` (damaged or truncated) is logged and
    returns None; its ETag is not kept, so the next poll downloads it again."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/") + "/v1/checkpoint/latest"
        self.where = self.url
        self.timeout_s = timeout_s
        self.etag: str | None = None
        self._failing = False

    def fetch_new(self) -> Followed | None:
        """The learner's newest checkpoint if it differs from the last one returned, else None."""
        downloaded = self._download()
        if downloaded is None:
            return None
        data, headers = downloaded
        try:
            state = decode_state(data)
            sequence = int(headers.get("X-Checkpoint-Sequence", ""))
        except (CheckpointError, ValueError) as exc:
            log.error("rejected the checkpoint: %s (%d bytes from %s); keeping the current snapshot",
                      exc, len(data), self.url)
            return None
        self.etag = headers.get("ETag")
        return Followed(f"ckpt-{sequence:012d} from {self.url}", sequence, state)

    def _download(self) -> tuple[bytes, Any] | None:
        """The body and headers of a 200 answer; None for 304 (unchanged), 404 (none yet) or a failure."""
        request = urllib.request.Request(self.url, headers={"If-None-Match": self.etag} if self.etag else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer = response.read(), response.headers
        except urllib.error.HTTPError as exc:
            if exc.code not in (304, 404):
                self._note_failure(f"HTTP {exc.code}")
            return None
        except (OSError, http.client.HTTPException) as exc:  # unreachable, timed out, body cut short
            self._note_failure(repr(exc))
            return None
        if self._failing:
            log.info("fetching checkpoints from %s works again", self.url)
            self._failing = False
        return answer

    def _note_failure(self, reason: str) -> None:
        """Log the first failure of a run of them (a learner that is starting fails every poll)."""
        if not self._failing:
            log.warning("cannot fetch a checkpoint from %s (%s); retrying every poll", self.url, reason)
        self._failing = True


def checkpoint_source(follow: str | Path) -> DirectoryCheckpoints | LearnerCheckpoints:
    """`follow` is the learner's checkpoint directory or its http(s) URL."""
    if str(follow).startswith(("http://", "https://")):
        return LearnerCheckpoints(str(follow))
    return DirectoryCheckpoints(follow)


class CheckpointFollower:
    def __init__(self, follow: str | Path, poll_s: float = 0.5) -> None:
        self.source = checkpoint_source(follow)
        self.poll_s = poll_s
        self.snapshots = SnapshotPublisher()
        self.learner: Learner | None = None
        self.sequence = 0
        self.loaded_at: float | None = None
        self._stop = threading.Event()

    def poll_once(self) -> bool:
        """Serve the source's next checkpoint if it has one; True when one was loaded."""
        checkpoint = self.source.fetch_new()
        if checkpoint is None:
            return False
        state = checkpoint.state
        if self.learner is None:
            self.learner = create_learner(state["learner"]["config"])
        self.learner.load_state_dict(state["learner"])
        self.snapshots.publish(self.learner, records_learned=state["stats"]["learned"])
        self.sequence, self.loaded_at = checkpoint.sequence, time.time()
        log.info("serving %s: model version %d", checkpoint.name, self.learner.updates)
        return True

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a checkpoint being pruned or written under us: try again next round
                log.exception("following %s failed; retrying", self.source.where)
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        """Ask `run` to return. Safe from a signal handler: one may interrupt `run`'s own Event.wait in this thread
        while it holds the event's lock, which is not re-entrant (setting it here deadlocked `serve --follow` on
        SIGTERM), so the event is set from a new thread; `run` returns as soon as it has left the wait."""
        threading.Thread(target=self._stop.set, name="follower-stop", daemon=True).start()
