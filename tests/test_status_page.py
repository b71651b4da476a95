"""The status page in headless Chromium (Debian's package, driven by Playwright) against the running daemon:
it loads without console errors, draws the curve and updates as records arrive."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from daemon_support import daemon_config, typed, wait_for
from playwright.sync_api import sync_playwright

from pegp_stream.config import StreamConfig
from pegp_stream.daemon import Daemon
from pegp_stream.data.streams import build_stream
from pegp_stream.kafka.broker import EmbeddedBroker, free_port
from pegp_stream.kafka.produce import ProduceOptions, produce

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is required (apt-get install chromium); tests/run.sh installs it")
    return path


def test_status_page_loads_draws_and_updates(tmp_path, digits_backbone):
    with EmbeddedBroker(port=free_port()) as broker:
        stream = build_stream(StreamConfig(datasets=("digits",), limit_per_class=40))
        config = daemon_config(tmp_path, broker.bootstrap_servers, "page", digits_backbone, exit_when_idle_s=None,
                               http={"enabled": True, "port": 0})
        config["learner"]["head"] = {"kind": "ncm"}
        producer = threading.Thread(target=produce, args=(stream, ProduceOptions(
            topic="page", bootstrap_servers=broker.bootstrap_servers, rate=40.0)))
        producer.start()
        daemon = Daemon(typed(config))
        thread = threading.Thread(target=daemon.run)
        thread.start()
        try:
            wait_for(lambda: daemon.http is not None and daemon.stats.learned >= 40, 120, what="first records")
            errors: list[str] = []
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
                page = browser.new_page()
                page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(daemon.http.url + "/")
                page.wait_for_function("Number(document.getElementById('records').textContent) > 0")
                first = int(page.text_content("#records"))
                first_points = int(page.get_attribute("#curve", "data-points"))
                page.wait_for_function(f"Number(document.getElementById('records').textContent) > {first + 40}",
                                       timeout=60_000)
                time.sleep(2.5)  # one more refresh, so the canvas has the newer curve too
                later_points = int(page.get_attribute("#curve", "data-points"))
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
                rows = page.locator("#ranks tr").count()
                browser.close()
        finally:
            daemon.request_stop()
            thread.join(timeout=60)
            producer.join(timeout=60)
    assert errors == []
    assert later_points > first_points >= 1
    assert rows == len(daemon.learner.ranks)
