"""Serving replicas: a read-only server that follows the learner's checkpoints and serves the same API.

It never learns: it rebuilds the learner from the newest checkpoint's own config once, then loads each newer
checkpoint as it appears and publishes it as a snapshot. Its model version is the learner's update count at
that checkpoint, so clients of several replicas can compare versions.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from ..checkpoint import CheckpointStore
from ..learner import Learner, create_learner
from .snapshot import SnapshotPublisher

log = logging.getLogger(__name__)


class CheckpointFollower:
    def __init__(self, directory: str | Path, poll_s: float = 0.5) -> None:
        self.store = CheckpointStore(directory)
        self.poll_s = poll_s
        self.snapshots = SnapshotPublisher()
        self.learner: Learner | None = None
        self.sequence = 0
        self.loaded_at: float | None = None
        self._stop = threading.Event()

    def poll_once(self) -> bool:
        """Load the newest intact checkpoint if it is newer than the one served; True when one was loaded."""
        paths = self.store.paths()
        if not paths or self.store.sequence_of(paths[-1]) <= self.sequence:
            return False
        checkpoint = self.store.load_latest()
        if checkpoint is None or checkpoint.sequence <= self.sequence:
            return False
        state = checkpoint.state
        if self.learner is None:
            self.learner = create_learner(state["learner"]["config"])
        self.learner.load_state_dict(state["learner"])
        self.snapshots.publish(self.learner, records_learned=state["stats"]["learned"])
        self.sequence, self.loaded_at = checkpoint.sequence, time.time()
        log.info("serving %s: model version %d", checkpoint.path.name, self.learner.updates)
        return True

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a checkpoint being pruned or written under us: try again next round
                log.exception("following %s failed; retrying", self.store.directory)
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        self._stop.set()
