"""Start-up and shutdown as an operator sees them: real processes, real signals, one-line errors (issue 9)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from daemon_support import wait_for

from pegp_stream.stream.broker import free_port

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """`pegp-stream ARGS` as its own process, this checkout first on the path."""
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "pegp_stream.cli", *args], env=environ, text=True, **popen)


def port_accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_broker_command_stops_on_sigterm_and_frees_its_port(tmp_path):
    port = free_port()
    process = cli("broker", "--port", str(port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert "broker listening" in process.stdout.readline()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert wait_for(lambda: not port_accepts(port), timeout=30, what=f"port {port} to be free")


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> tuple[int, str]:
    """Run `pegp-stream ARGS` to its end; returns the exit status and stderr."""
    process = cli(*args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, err


def assert_one_line_error(code: int, err: str, field: str, *words: str) -> str:
    """Exit status 2 and `error: FIELD: ...` as the last line of stderr, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {field}: "), err
    assert all(word in last for word in words), last
    return last


def write_config(tmp_path: Path, **overrides) -> str:
    """A daemon config of the tiny test ViT, a broker nobody listens on, no HTTP; returns its file name."""
    from daemon_support import daemon_config

    config = daemon_config(tmp_path, f"127.0.0.1:{free_port()}", "samples", **overrides)
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_checkpoint_directory_under_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    config = write_config(tmp_path, checkpoint={"dir": str(tmp_path / "a-file" / "checkpoints")})
    assert_one_line_error(*run_cli("run", "--config", config), "checkpoint.dir", "a-file", "Not a directory")


@pytest.mark.parametrize("device", ["bogus", "cuda:0"])
def test_a_device_this_machine_lacks_is_a_one_line_error(tmp_path, device):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = write_config(tmp_path)
    words = ["not a supported torch device"] if device == "bogus" else ["CUDA is not available"]
    assert_one_line_error(*run_cli("run", "--config", config, "--set", f"learner.device={device}"),
                          "learner.device", *words)


@pytest.mark.parametrize("offline", [False, True], ids=["hub-unreachable", "HF_HUB_OFFLINE"])
def test_pretrained_weights_without_the_hub_fail_fast_saying_how_to_supply_them(tmp_path, offline):
    """An empty Hugging Face cache and a hub endpoint nobody listens on (or offline mode): one line naming the
    field and the offline way (checkpoint_path), instead of a minute of retries and a traceback."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    config = write_config(tmp_path)
    code, err = run_cli("run", "--config", config, "--set", "learner.backbone.pretrained=true", env=env)
    assert_one_line_error(code, err, "backbone.pretrained", "checkpoint_path", "HF_HUB_OFFLINE=1")
    assert "Retrying" not in err
