"""What one HTTP client can cost the server, against a running server over real sockets: bodies are counted
while they arrive (chunked and multipart too), a request's images have a pixel budget checked before
decoding, idle and incomplete connections are closed, connections beyond the cap get 503, and a port in use
is a one-line configuration error."""

from __future__ import annotations

import base64
import io
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from conftest import digits_segment, tiny_config
from daemon_support import checkpointed_learned, daemon_config, latest_state, produce_digits, start_process, wait_for
from PIL import Image

from pegp_stream import create_learner
from pegp_stream.config import HttpConfig
from pegp_stream.errors import ConfigError
from pegp_stream.kafka.broker import EmbeddedBroker, free_port
from pegp_stream.serving.app import HttpServer, create_app
from pegp_stream.serving.snapshot import SnapshotPublisher

LIMITS = {"max_body_bytes": 200_000, "max_request_pixels": 300 * 300, "max_connections": 16,
          "request_timeout_s": 1.0, "keep_alive_s": 1.0}


@pytest.fixture(scope="module")
def server():
    learner = create_learner(tiny_config("adapter"))
    images, labels = digits_segment((0, 1), 8)
    learner.learn_many(images, labels)
    snapshots = SnapshotPublisher()
    snapshots.publish(learner, records_learned=8)
    http = HttpServer(create_app(HttpConfig(**LIMITS), snapshots), "127.0.0.1", 0).start()
    yield http
    http.stop()


def png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def header_only_png(side: int) -> bytes:
    """A PNG declaring side x side, cut 10 bytes into its pixel data: decoding it would fail."""
    data = png(side)
    return data[:data.index(b"IDAT") + 4 + 10]


def connect(server: HttpServer) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=30)


def status_of(sock: socket.socket) -> int:
    """The status code of the response waiting on `sock`."""
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, f"closed without a response after {head!r}"
        head += chunk
    return int(head.split(b" ", 2)[1])


def send_chunked_until_answered(sock: socket.socket, path: str, content_type: str, chunks) -> tuple[int, int]:
    """POST a chunked body from `chunks` until the server answers; returns (status, body bytes sent)."""
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    sent = 0
    for chunk in chunks:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
    else:
        sock.sendall(b"0\r\n\r\n")
    return status_of(sock), sent


def closed_by_server(sock: socket.socket, within_s: float = 30.0) -> bool:
    """Whether the server closes `sock` (EOF or reset) within `within_s`, reading whatever it sends first."""
    sock.settimeout(within_s)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


# ---------------------------------------------------------------- 11: bodies and pixels


def test_a_chunked_json_body_is_refused_while_it_arrives(server):
    total = 64 * 2**20  # far over max_body_bytes; the server must answer long before it has all of it
    start = b'{"instances": [{"image": "'
    chunks = (start if i == 0 else b"A" * 65_536 for i in range(total // 65_536))
    with connect(server) as sock:
        status, sent = send_chunked_until_answered(sock, "/v1/predict", "application/json", chunks)
    assert status == 413
    assert sent < total


def test_a_chunked_multipart_upload_is_refused_while_it_arrives(server):
    boundary = "pegp-test-boundary"
    total = 64 * 2**20
    first = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
             "Content-Type: image/png\r\n\r\n").encode()
    chunks = (first if i == 0 else b"\0" * 65_536 for i in range(total // 65_536))
    with connect(server) as sock:
        status, sent = send_chunked_until_answered(sock, "/v1/predict/files",
                                                   f"multipart/form-data; boundary={boundary}", chunks)
    assert status == 413
    assert sent < total


def test_a_declared_length_over_the_limit_is_refused_before_reading(server):
    with connect(server) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 999999999\r\n\r\n")
        assert status_of(sock) == 413


def test_a_body_that_stops_arriving_gets_408(server):
    with connect(server) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"instances\": [")
        assert status_of(sock) == 408
        assert closed_by_server(sock)


def test_the_request_pixel_budget_is_checked_on_headers_before_decoding(server):
    big, small = base64.b64encode(png(256)).decode(), base64.b64encode(png(100)).decode()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/v1/predict", json={"instances": [{"image": small}] * 8}).status_code == 200
        # The second image declares 256 x 256 and has no pixel data: refused for the budget, not for being
        # undecodable, so its size was read from its header before any decoding.
        truncated = base64.b64encode(header_only_png(256)).decode()
        response = client.post("/v1/predict", json={"instances": [{"image": big}, {"image": truncated}]})
        assert response.status_code == 413, response.text
        assert "instances[1].image" in response.json()["detail"]
        assert "max_request_pixels" in response.json()["detail"]
        one_too_many = client.post("/v1/predict", json={"instances": [{"image": base64.b64encode(png(301)).decode()}]})
        assert one_too_many.status_code == 413 and "max_request_pixels" in one_too_many.json()["detail"]
        raw = {"pixels": base64.b64encode(bytes(200 * 200)).decode(), "shape": [200, 200]}
        assert client.post("/v1/predict", json={"instances": [raw, raw, raw]}).status_code == 413
        files = [("files", (f"{i}.png", png(256), "image/png")) for i in range(2)]
        response = client.post("/v1/predict/files", files=files)
        assert response.status_code == 413 and "files[1] (1.png)" in response.json()["detail"]


# ---------------------------------------------------------------- 12: connections


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_idle_and_incomplete_connections_are_closed_and_the_cap_answers_503(server):
    baseline = open_fds()
    idle = [connect(server) for _ in range(24)]  # more than max_connections=16, none sends a byte
    partial = [connect(server) for _ in range(4)]
    for sock in partial:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    time.sleep(0.2)  # let the server accept them all
    with connect(server) as extra:
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(extra) == 503
    assert all(closed_by_server(sock) for sock in idle + partial)
    for sock in idle + partial:
        sock.close()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
    assert open_fds() <= baseline + 2  # the server holds none of them any more (an httpx pool may linger)


def test_a_slow_header_sender_is_closed_and_a_kept_alive_connection_times_out(server):
    with connect(server) as slow:
        closed = False
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if select.select([slow], [], [], 0.25)[0]:
                closed = closed_by_server(slow)
                break
        assert closed, "a connection sending its headers one byte every 0.25 s stayed open for 50 s"
    with connect(server) as kept:
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(kept) == 200
        assert closed_by_server(kept)


def test_a_flood_of_connections_cannot_starve_the_learner_of_file_descriptors(tmp_path):
    """The learner in its own process with 512 descriptors; 1000 connections that never send a byte, held
    longer than any deadline, while it learns and checkpoints: it learns everything and stops cleanly."""
    port = free_port()
    with EmbeddedBroker(port=free_port()) as broker:
        config = daemon_config(tmp_path, broker.bootstrap_servers, "flood", exit_when_idle_s=None,
                               http={"enabled": True, "port": port, "request_timeout_s": 600},
                               checkpoint={"every_records": 24})  # 120 records: the last checkpoint has them all
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))  # inherited by the daemon only
        try:
            process = start_process(config, tmp_path)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        flood: list[socket.socket] = []
        try:
            wait_for(lambda: _healthy(f"http://127.0.0.1:{port}"), 120, what="the daemon's HTTP server")
            flood += [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(1000)]
            ids = produce_digits(broker.bootstrap_servers, "flood", limit_per_class=12)
            checkpoints = tmp_path / "checkpoints"
            wait_for(lambda: process.poll() is not None or checkpointed_learned(checkpoints) == len(ids), 300,
                     what="checkpoints while flooded")
            assert process.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=120) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
        finally:
            process.kill()
            for sock in flood:
                sock.close()
    assert latest_state(checkpoints)["stats"]["learned"] == len(ids)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------- 17 (part): the port in use


def test_a_port_in_use_is_a_config_error_naming_http_port(server):
    with pytest.raises(ConfigError, match="in use") as caught:
        HttpServer(create_app(HttpConfig(), SnapshotPublisher()), server.host, server.port)
    assert caught.value.field == "http.port"


def test_serve_on_a_port_in_use_exits_2_with_one_line(server, tmp_path):
    result = subprocess.run([sys.executable, "-m", "pegp_stream.cli", "serve", "--follow", str(tmp_path),
                             "--set", f"http.port={server.port}"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: http.port: 127.0.0.1:{server.port} is in use by another process"
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- 22: the API a user sees


def test_docs_render_offline_in_chromium(server):
    """Swagger UI in headless Chromium with every non-local request refused: it renders each operation."""
    from playwright.sync_api import sync_playwright
    from test_status_page import CHROMIUM_FLAGS, chromium

    operations = sum(len(methods) for methods in httpx.get(server.url + "/openapi.json").json()["paths"].values())
    refused: list[str] = []
    errors: list[str] = []

    def only_local(route) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.route("**/*", only_local)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/docs")
        page.wait_for_selector(".opblock", timeout=60_000)
        rendered = page.locator(".opblock").count()
        paths = page.locator(".opblock-summary-path").all_text_contents()
        browser.close()
    assert refused == [] and errors == []
    assert rendered == operations
    assert "/v1/predict" in paths


def test_openapi_types_every_answer_and_is_valid(server):
    from openapi_spec_validator import validate

    spec = httpx.get(server.url + "/openapi.json").json()
    validate(spec)
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            for code, response in operation["responses"].items():
                if code == "304":  # Not Modified has no body by definition
                    continue
                schema = next((c.get("schema") for c in response.get("content", {}).values()), None)
                assert schema, f"{method.upper()} {path} answers {code} without a typed body"


def test_an_instance_needs_an_image_or_pixels(server):
    response = httpx.post(server.url + "/v1/predict", json={"instances": [{"shape": [2, 2]}]})
    assert response.status_code == 422
    assert "needs 'image'" in response.json()["detail"]
