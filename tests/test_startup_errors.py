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

from pegp_stream.kafka.broker import free_port

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
    """Exit status 2 and `error: FIELD: ...` as the last line of stderr, no traceback. Errors found while the
    learner is built name fields within the learner section, so `learner.` may or may not lead the field."""
    assert code == 2, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith((f"error: {field}: ", f"error: learner.{field}: ")), err
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


# Kubernetes injects these for a Service named pegp-serving (enableServiceLinks, on by default).
SERVICE_LINKS = {"PEGP_SERVING_SERVICE_HOST": "10.96.0.12", "PEGP_SERVING_SERVICE_PORT": "8080",
                 "PEGP_SERVING_PORT": "tcp://10.96.0.12:8080", "PEGP_SERVING_PORT_8080_TCP_PROTO": "tcp"}


@pytest.fixture(scope="module")
def broker():
    from pegp_stream.kafka.broker import EmbeddedBroker

    with EmbeddedBroker(port=free_port()) as embedded:
        yield embedded


def test_run_ignores_service_link_variables_with_one_warning(tmp_path, broker):
    from daemon_support import daemon_config, latest_state, produce_digits

    produce_digits(broker.bootstrap_servers, "links", limit_per_class=2)
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump(daemon_config(tmp_path, broker.bootstrap_servers, "links")))
    code, err = run_cli("run", "--config", str(path), env=SERVICE_LINKS)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "ignoring environment variables" in line]
    assert len(warnings) == 1 and all(name in warnings[0] for name in SERVICE_LINKS), err
    assert latest_state(tmp_path / "checkpoints")["stats"]["learned"] == 20


def test_serve_ignores_service_link_variables(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    process = cli("serve", "--follow", str(tmp_path / "checkpoints"), "--set", "http.port=0", env=SERVICE_LINKS,
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lines = []
        while not any("serving replica on" in line for line in lines):
            line = process.stderr.readline()
            assert line, "".join(lines)  # the process ended before serving
            lines.append(line)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_pegp_variable_naming_a_real_section_stays_strict():
    from pegp_stream.config import ConfigError, DaemonConfig, load

    with pytest.raises(ConfigError) as caught:
        load(DaemonConfig, environ={**SERVICE_LINKS, "PEGP_LEARNER__PET__RANKK": "3"})
    assert caught.value.field == "learner.pet.rankk" and "Extra inputs" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load(DaemonConfig, overrides=["serving_service_host=10.0.0.1"])  # --set keys stay strict
    assert caught.value.field == "serving_service_host"
    assert load(DaemonConfig, environ={**SERVICE_LINKS, "PEGP_HTTP__PORT": "9000"}).http.port == 9000


def test_a_checkpoint_of_another_pet_rank_is_a_one_line_error_naming_the_field(tmp_path, broker):
    from daemon_support import daemon_config, latest_state, produce_digits

    produce_digits(broker.bootstrap_servers, "rank", limit_per_class=2)
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump(daemon_config(tmp_path, broker.bootstrap_servers, "rank")))
    code, err = run_cli("run", "--config", str(path))
    assert code == 0, err
    assert latest_state(tmp_path / "checkpoints")["learner"]["layout"]["learner.pet.rank"] == 8
    code, err = run_cli("run", "--config", str(path), "--set", "learner.pet.rank=4")
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "learner.pet.rank: checkpoint has 8, config has 4" in last, err


def test_the_http_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, http={"enabled": True, "port": port})
        assert_one_line_error(*run_cli("run", "--config", config), "http.port", str(port))
