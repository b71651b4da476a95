"""Start-up and shutdown as an operator sees them: real processes, real signals, one-line errors (issue 9)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

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
