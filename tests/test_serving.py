"""The HTTP API with a real client against the running daemon (real broker, real records)."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
from daemon_support import daemon_config, produce_digits, typed, wait_for
from PIL import Image

from pegp_stream.core.prepare import to_model_input
from pegp_stream.daemon import Daemon
from pegp_stream.data.datasets import load_dataset
from pegp_stream.kafka.broker import EmbeddedBroker, free_port

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def served(tmp_path_factory, digits_backbone):
    tmp_path = tmp_path_factory.mktemp("served")
    with EmbeddedBroker(port=free_port()) as broker:
        ids = produce_digits(broker.bootstrap_servers, "serve", limit_per_class=12)
        config = daemon_config(tmp_path, broker.bootstrap_servers, "serve", digits_backbone, exit_when_idle_s=None,
                               http={"enabled": True, "port": 0, "boundary_token": TOKEN, "max_instances": 8,
                                     "max_body_bytes": 200_000})
        config["learner"]["head"] = {"kind": "ncm"}
        daemon = Daemon(typed(config))
        thread = threading.Thread(target=daemon.run)
        thread.start()
        wait_for(lambda: daemon.stats.learned == len(ids) and daemon.http is not None, 180, what="stream learned")
        with httpx.Client(base_url=daemon.http.url, timeout=30) as client:
            yield daemon, client
        daemon.request_stop()
        thread.join(timeout=60)


def png_b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_predictions_match_the_learner_on_the_same_snapshot(served):
    daemon, client = served
    test = load_dataset("digits", split="test")
    images = test.images[:8]
    daemon.publish()  # the learner is idle (stream consumed): snapshot == learner state
    response = client.post("/v1/predict", json={"instances": [{"image": png_b64(im)} for im in images], "top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    spec = daemon.learner.input_config
    expected = daemon.learner.predict_many(to_model_input(images, spec["input_size"], spec["mean"], spec["std"]))
    assert body["model_version"] == daemon.learner.updates
    assert [p["label"] for p in body["predictions"]] == expected.labels
    for answer, probs in zip(body["predictions"], expected.probs, strict=True):
        assert answer["score"] == pytest.approx(float(probs.max()), abs=1e-6)
        assert len(answer["top_k"]) == 2 and answer["top_k"][0]["label"] == answer["label"]
    accuracy = np.mean([p == test.class_names[t] for p, t in zip(expected.labels, test.labels[:8], strict=True)])
    print(f"accuracy on 8 held-out digits: {accuracy:.2f}")


def test_raw_pixels_and_png_give_the_same_answer(served):
    _, client = served
    image = load_dataset("digits", split="test").images[3]
    raw = {"pixels": base64.b64encode(image.tobytes()).decode(), "shape": list(image.shape)}
    answers = [client.post("/v1/predict", json={"instances": [instance]}).json()["predictions"][0]
               for instance in (raw, {"image": png_b64(image)})]
    assert answers[0]["label"] == answers[1]["label"]
    assert answers[0]["score"] == pytest.approx(answers[1]["score"], abs=1e-6)


def test_multipart_files_give_the_same_answer_as_json(served):
    _, client = served
    images = load_dataset("digits", split="test").images[:3]
    pngs = [base64.b64decode(png_b64(im)) for im in images]
    as_json = client.post("/v1/predict", json={"instances": [{"image": png_b64(im)} for im in images]}).json()
    as_files = client.post("/v1/predict/files", files=[("files", (f"{i}.png", data, "image/png"))
                                                        for i, data in enumerate(pngs)]).json()
    assert as_files == as_json
    bad = client.post("/v1/predict/files", files=[("files", ("x.png", b"not a png", "image/png"))])
    assert bad.status_code == 400 and "files[0] (x.png)" in bad.json()["detail"]
    assert client.post("/v1/predict/files").status_code == 422


@pytest.mark.parametrize(("payload", "status", "words"), [
    ({"instances": []}, 422, "instances"),
    ({"instances": [{"image": "***"}]}, 400, "instances[0].image"),
    ({"instances": [{"image": base64.b64encode(b"not an image").decode()}]}, 400, "PNG or JPEG"),
    ({"instances": [{"image": "AA==", "pixels": "AA==", "shape": [1, 1]}]}, 400, "exactly one"),
    ({"instances": [{"pixels": "AAAA", "shape": [2, 2]}]}, 400, "shape [2, 2] needs 4"),
    ({"instances": [{"pixels": "AA==", "shape": [1, 1]}] * 9}, 413, "max_instances=8"),
    ({"instances": [{"image": "A" * 300_000}]}, 413, "body larger than"),
    ({"instances": [{"imag": "AA=="}]}, 422, "instances.0.imag"),
    ({"instances": [{"image": "AA=="}], "top_k": 0}, 422, "top_k"),
    ([1, 2, 3], 422, "body"),
])
def test_bad_requests_get_a_4xx_with_a_message(served, payload, status, words):
    _, client = served
    response = client.post("/v1/predict", json=payload)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_model_info_health_and_readiness(served):
    daemon, client = served
    model = client.get("/v1/model").json()
    assert {"version", "classes", "segments", "ranks", "records_learned", "lag"} <= set(model)
    assert sorted(model["classes"]) == list(range(10)) and model["segments"] == 5
    assert model["records_learned"] <= daemon.stats.learned and model["lag"] == {"0": 0}
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json()["status"] == "ready"


def test_operator_boundary_needs_the_bearer_token(served):
    daemon, client = served
    assert client.post("/v1/boundary").status_code == 401
    assert client.post("/v1/boundary", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.post("/v1/boundary", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 202
    wait_for(lambda: daemon.stats.boundaries["operator"] == 1, 10, what="the boundary applied while idle")


def test_metrics_exposition_has_the_contract_series(served):
    daemon, client = served
    client.post("/v1/predict", json={"instances": [{"pixels": "AA==", "shape": [1, 1]}]})
    text = client.get("/metrics").text
    for name in ("pegp_samples_consumed_total{partition=\"0\"}", "pegp_prequential_accuracy{window=\"cumulative\"}",
                 "pegp_consumer_lag_records{partition=\"0\"}", "pegp_model_version", "pegp_basis_rank{space=",
                 "pegp_boundaries_total{cause=\"marker\"} 4.0", "pegp_predict_requests_total{code=\"200\"}",
                 "pegp_predict_duration_seconds_bucket", "pegp_build_info",
                 'pegp_update_duration_seconds_bucket{le="+Inf"}', "pegp_update_duration_seconds_count"):
        assert name in text, name
    assert f"pegp_samples_learned_total {float(daemon.stats.learned)}" in text
    assert f"pegp_update_duration_seconds_count {float(daemon.learner.updates)}" in text


def test_predictions_while_learning_never_fail_and_versions_never_go_back(tmp_path, digits_backbone):
    """Two clients predict continuously while the daemon learns a stream with boundaries; p99 latency under
    learning is printed next to idle p99 (numbers, not assertions: timing belongs in benchmarks)."""
    image = {"image": png_b64(load_dataset("digits", split="test").images[0])}
    with EmbeddedBroker(port=free_port()) as broker:
        ids = produce_digits(broker.bootstrap_servers, "busy", limit_per_class=25)
        config = daemon_config(tmp_path, broker.bootstrap_servers, "busy", digits_backbone, exit_when_idle_s=None,
                               http={"enabled": True, "port": 0, "snapshot_every_updates": 2})
        daemon = Daemon(typed(config))
        thread = threading.Thread(target=daemon.run)
        thread.start()
        wait_for(lambda: daemon.http is not None, 60, what="the HTTP server")
        results: dict[int, list] = {0: [], 1: []}

        def client_loop(key: int, until) -> None:
            with httpx.Client(base_url=daemon.http.url, timeout=30) as client:
                while not until():
                    started = time.perf_counter()
                    response = client.post("/v1/predict", json={"instances": [image]})
                    results[key].append((response.status_code, response.json().get("model_version"),
                                         time.perf_counter() - started))

        learning = [threading.Thread(target=client_loop, args=(k, lambda: daemon.stats.learned >= len(ids)))
                    for k in results]
        for t in learning:
            t.start()
        for t in learning:
            t.join(timeout=300)
        idle: list = []
        results[2] = idle
        deadline = time.monotonic() + 3
        client_loop(2, lambda: time.monotonic() > deadline)
        daemon.request_stop()
        thread.join(timeout=60)
    for key in (0, 1):
        codes = {code for code, _, _ in results[key]}
        versions = [version for _, version, _ in results[key]]
        assert codes == {200}, codes
        assert versions == sorted(versions), "a client saw the model version go back"
        assert len(set(versions)) > 1, "the snapshot never changed while the client watched"
    busy = sorted(t for key in (0, 1) for _, _, t in results[key])
    calm = sorted(t for _, _, t in idle)
    print(f"predict p99 while learning {1000 * busy[int(0.99 * (len(busy) - 1))]:.1f} ms over {len(busy)} "
          f"requests; idle {1000 * calm[int(0.99 * (len(calm) - 1))]:.1f} ms over {len(calm)}")


def test_status_page_is_self_contained_and_its_data_is_consistent(served):
    daemon, client = served
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/v1/status" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline
    status = client.get("/v1/status").json()
    assert status["records_learned"] == daemon.stats.learned
    operator = [daemon.stats.learned] * daemon.stats.boundaries["operator"]  # requested by another test, idle
    assert status["boundaries"] == [24, 48, 72, 96, *operator]
    assert len(status["curve"]) >= 5 and all(0.0 <= p[1] <= 1.0 for p in status["curve"])
    assert set(status["segment_accuracy"]) == {"0", "1", "2", "3", "4"}
    assert status["ranks"] == daemon.learner.ranks
