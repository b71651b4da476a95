"""A serving replica process follows the learner's checkpoints: it serves each newer one within a bounded
delay (printed), never learns, and answers exactly like the learner once both hold the same state."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import logging
import subprocess
import sys
import threading
import time

import httpx
from daemon_support import daemon_config, produce_digits, start_process, typed, wait_for
from PIL import Image

from pegp_stream.checkpoint import CheckpointStore
from pegp_stream.core.prepare import to_model_input
from pegp_stream.daemon import Daemon
from pegp_stream.data.datasets import load_dataset
from pegp_stream.kafka.broker import EmbeddedBroker, free_port


def test_replica_serves_the_newest_checkpoint(tmp_path):
    port = free_port()
    checkpoints = tmp_path / "checkpoints"
    # one store to read with (making a CheckpointStore once removed *.partial files: one per poll deleted the
    # learner's checkpoint while it was being written; now only the writer removes them, at its start)
    store = CheckpointStore(checkpoints)
    replica = subprocess.Popen([sys.executable, "-m", "pegp_stream.cli", "serve", "--follow", str(checkpoints),
                                "--poll", "0.2", "--set", f"http.port={port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    with EmbeddedBroker(port=free_port()) as broker, httpx.Client(base_url=url, timeout=10) as client:
        try:
            wait_for(lambda: _get(client, "/healthz"), 120, what="the replica's HTTP server")
            assert client.get("/readyz").status_code == 503  # nothing to serve before the first checkpoint
            ids = produce_digits(broker.bootstrap_servers, "followed", limit_per_class=16)
            config = daemon_config(tmp_path, broker.bootstrap_servers, "followed", exit_when_idle_s=None)
            daemon = Daemon(typed(config))
            thread = threading.Thread(target=daemon.run)
            thread.start()
            seen, delays = set(), []
            while daemon.stats.learned < len(ids) or len(seen) < 2:
                paths = store.paths()
                if paths:
                    newest = paths[-1]
                    version = _version_in(newest)
                    if version not in seen:
                        written = newest.stat().st_mtime
                        wait_for(lambda v=version: (_model(client) or {}).get("version", -1) >= v, 60,
                                 interval=0.05, what=f"the replica to serve version {version}")
                        delays.append(time.time() - written)
                        seen.add(version)
                time.sleep(0.05)
            daemon.request_stop()
            thread.join(timeout=60)
            final = _version_in(store.paths()[-1])
            wait_for(lambda: (_model(client) or {}).get("version") == final, 60, what="the final checkpoint")
            image = load_dataset("digits", split="test").images[:4]
            answer = client.post("/v1/predict", json={"instances": [{"image": _png(im)} for im in image]}).json()
            spec = daemon.learner.input_config
            expected = daemon.learner.predict_many(to_model_input(image, spec["input_size"], spec["mean"],
                                                                  spec["std"]))
        finally:
            replica.terminate()
            replica.wait(timeout=30)
    print(f"replica caught up with {len(delays)} checkpoints; delay after the file was written: "
          f"max {max(delays):.2f} s, median {sorted(delays)[len(delays) // 2]:.2f} s")
    assert answer["model_version"] == final
    assert [p["label"] for p in answer["predictions"]] == expected.labels
    assert replica.returncode == 0


def _version_in(path) -> int:
    from pegp_stream.checkpoint import decode_state

    return decode_state(path.read_bytes())["learner"]["counters"]["updates"]


def _get(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.HTTPError:
        return False


def _model(client: httpx.Client) -> dict | None:
    try:
        return client.get("/v1/model").json()
    except httpx.HTTPError:
        return None


def _png(image) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_replica_follows_the_learner_over_http(tmp_path):
    """Two processes, no shared directory: `pegp-stream run` offers its newest checkpoint over HTTP and
    `pegp-stream serve --follow http://...` downloads it, reaches the checkpointed version and answers like
    the learner."""
    learner_port, replica_port = free_port(), free_port()
    learner_url, replica_url = f"http://127.0.0.1:{learner_port}", f"http://127.0.0.1:{replica_port}"
    with EmbeddedBroker(port=free_port()) as broker:
        config = daemon_config(tmp_path, broker.bootstrap_servers, "offered", exit_when_idle_s=None,
                               checkpoint={"every_records": 8},
                               http={"enabled": True, "port": learner_port, "snapshot_every_updates": 1})
        learner = start_process(config, tmp_path, "learner")
        replica = subprocess.Popen([sys.executable, "-m", "pegp_stream.cli", "serve", "--follow", learner_url,
                                    "--poll", "0.2", "--set", f"http.port={replica_port}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with httpx.Client(base_url=learner_url, timeout=30) as to_learner, \
                    httpx.Client(base_url=replica_url, timeout=30) as to_replica:
                wait_for(lambda: _get(to_learner, "/healthz"), 180, what="the learner's HTTP server")
                assert to_learner.get("/v1/checkpoint/latest").status_code == 404  # none written yet
                ids = produce_digits(broker.bootstrap_servers, "offered", limit_per_class=8)
                state, etag = wait_for(lambda: _offered_state(to_learner, len(ids)), 180,
                                       what="a checkpoint of every record")
                assert to_learner.get("/v1/checkpoint/latest", headers={"If-None-Match": etag}).status_code == 304
                final = state["learner"]["counters"]["updates"]
                wait_for(lambda: (_model(to_replica) or {}).get("version") == final, 180,
                         what=f"the replica to serve version {final}")
                wait_for(lambda: (_model(to_learner) or {}).get("version") == final, 60,
                         what=f"the learner to serve version {final}")
                images = {"instances": [{"image": _png(im)} for im in load_dataset("digits", split="test").images[:8]]}
                from_replica = to_replica.post("/v1/predict", json=images).json()
                from_learner = to_learner.post("/v1/predict", json=images).json()
                assert to_replica.get("/v1/checkpoint/latest").status_code == 404  # replicas offer none
        finally:
            for process in (replica, learner):
                process.terminate()
                process.wait(timeout=60)
    assert from_replica["model_version"] == from_learner["model_version"] == final
    labels = [[p["label"] for p in answer["predictions"]] for answer in (from_replica, from_learner)]
    assert labels[0] == labels[1]
    for mine, theirs in zip(from_replica["predictions"], from_learner["predictions"], strict=True):
        assert abs(mine["score"] - theirs["score"]) < 1e-5
    assert replica.returncode == 0 and learner.returncode == 0


def _offered_state(client: httpx.Client, records: int) -> tuple[dict, str] | None:
    """The learner's offered checkpoint (decoded) and its ETag once it holds `records` learned records."""
    from pegp_stream.checkpoint import decode_state

    response = client.get("/v1/checkpoint/latest")
    if response.status_code != 200:
        return None
    state = decode_state(response.content)
    assert response.headers["ETag"] == f'"{response.headers["X-Checkpoint-Sha256"]}"'
    int(response.headers["X-Checkpoint-Sequence"])
    return (state, response.headers["ETag"]) if state["stats"]["learned"] == records else None


class _Offer(http.server.BaseHTTPRequestHandler):
    """Serves `server.offer` (body, sequence) as a learner's /v1/checkpoint/latest, honouring If-None-Match;
    `server.cut_at` stops the body short of its Content-Length."""

    def do_GET(self):  # noqa: N802 - the http.server hook
        body, sequence = self.server.offer
        etag = f'"{hashlib.sha256(body).hexdigest()}"'
        self.server.conditional.append(self.headers.get("If-None-Match"))
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.end_headers()
            return
        self.send_response(200)
        for name, value in (("ETag", etag), ("X-Checkpoint-Sequence", str(sequence)),
                            ("Content-Length", str(len(body)))):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body[: self.server.cut_at])  # cut_at: the connection closes before the whole body

    def log_message(self, *args):
        pass


def test_a_damaged_download_is_rejected_and_the_snapshot_kept(caplog):
    """A damaged or truncated checkpoint from the learner's URL fails decode_state: the replica logs it, keeps
    serving the snapshot it had, and takes the next intact one."""
    from conftest import digits_segment, tiny_config

    from pegp_stream.checkpoint import encode_state
    from pegp_stream.core.learner import create_learner
    from pegp_stream.serving.follow import CheckpointFollower

    learner = create_learner(tiny_config("adapter"))
    images, labels = digits_segment((0, 1), 8)
    learner.learn_many(images, labels)
    first = encode_state({"learner": learner.state_dict(), "stats": {"learned": 8}})
    learner.learn_many(images, labels)
    second = encode_state({"learner": learner.state_dict(), "stats": {"learned": 16}})
    damaged = bytearray(second)
    damaged[-3] ^= 0xFF  # a flipped bit in the last tensor's bytes
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Offer)
    server.offer, server.conditional, server.cut_at = (first, 1), [], None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        follower = CheckpointFollower(f"http://127.0.0.1:{server.server_address[1]}", poll_s=0.1)
        assert follower.poll_once()
        served = follower.snapshots.current
        assert served.info.version == 1 and follower.sequence == 1
        assert not follower.poll_once()  # unchanged: answered 304
        assert server.conditional[-1] == f'"{hashlib.sha256(first).hexdigest()}"'
        for bad, cut_at, logged in ((bytes(damaged), None, "rejected the checkpoint: checksum mismatch"),
                                    (second[: len(second) // 2], None, "rejected the checkpoint: unreadable"),
                                    (second, len(second) // 2, "cannot fetch a checkpoint")):
            server.offer, server.cut_at = (bad, 2), cut_at
            with caplog.at_level(logging.WARNING, logger="pegp_stream.serving.follow"):
                assert not follower.poll_once()
            assert logged in caplog.text
            caplog.clear()
            assert follower.snapshots.current is served and follower.sequence == 1
        server.cut_at = None
        assert follower.poll_once()
        assert follower.snapshots.current.info.version == 2 and follower.sequence == 2
    finally:
        server.shutdown()
        server.server_close()
