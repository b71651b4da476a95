"""A serving replica process follows the learner's checkpoints: it serves each newer one within a bounded
delay (printed), never learns, and answers exactly like the learner once both hold the same state."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import threading
import time

import httpx
from daemon_support import daemon_config, produce_digits, typed, wait_for
from PIL import Image

from pegp_stream.checkpoint import CheckpointStore
from pegp_stream.daemon import Daemon
from pegp_stream.datasets import load_dataset
from pegp_stream.stream.broker import EmbeddedBroker, free_port
from pegp_stream.stream.preprocess import to_model_input


def test_replica_serves_the_newest_checkpoint(tmp_path):
    port = free_port()
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
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
                paths = CheckpointStore(checkpoints).paths()
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
            final = _version_in(CheckpointStore(checkpoints).paths()[-1])
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
