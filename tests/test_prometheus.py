"""Real Prometheus (Debian's package) scrapes the running daemon; PromQL returns the expected series."""

from __future__ import annotations

import shutil
import subprocess
import threading

import httpx
import pytest
import yaml
from daemon_support import daemon_config, produce_digits, typed, wait_for

from pegp_stream.daemon import Daemon
from pegp_stream.kafka.broker import EmbeddedBroker, free_port


def query(url: str, promql: str) -> list:
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    response.raise_for_status()
    return response.json()["data"]["result"]


def test_prometheus_scrapes_the_daemon(tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is required (apt-get install prometheus); tests/run.sh installs it")
    with EmbeddedBroker(port=free_port()) as broker:
        ids = produce_digits(broker.bootstrap_servers, "scraped", limit_per_class=6)
        config = daemon_config(tmp_path, broker.bootstrap_servers, "scraped", exit_when_idle_s=None,
                               http={"enabled": True, "port": 0})
        daemon = Daemon(typed(config))
        thread = threading.Thread(target=daemon.run)
        thread.start()
        prometheus = None
        try:
            wait_for(lambda: daemon.http is not None and daemon.stats.learned == len(ids), 120, what="learning")
            target = f"{daemon.http.host}:{daemon.http.port}"
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [{"job_name": "pegp-learner", "static_configs": [{"targets": [target]}]}],
            }))
            port = free_port()
            prometheus = subprocess.Popen(
                [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{port}"

            def learned_series():
                try:
                    return query(url, 'pegp_samples_learned_total{job="pegp-learner"}')
                except httpx.HTTPError:
                    return None

            series = wait_for(learned_series, 60, interval=0.5, what="Prometheus to scrape the daemon")
            assert float(series[0]["value"][1]) == len(ids)
            ranks = query(url, "pegp_basis_rank")
            assert {s["metric"]["space"] for s in ranks} == set(daemon.learner.ranks)
            boundaries = query(url, 'sum(pegp_boundaries_total{cause="marker"})')
            assert float(boundaries[0]["value"][1]) == 4
            assert query(url, 'up{job="pegp-learner"}')[0]["value"][1] == "1"
        finally:
            if prometheus is not None:
                prometheus.terminate()
                prometheus.wait(timeout=30)
            daemon.request_stop()
            thread.join(timeout=60)
