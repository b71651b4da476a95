"""`torchrun --nproc-per-node 2 -m pegp_stream run` against the real embedded broker: two learner ranks (gloo, CPU)
read a 4-partition topic (rank r the partitions p % 2 == r), learn every record once, and end with the model one
rank ends with when fed the same global batches (each step: rank 0's micro-batch, then rank 1's)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import digits_segment  # noqa: F401 - keeps conftest's fixtures importable here
from daemon_support import daemon_config, digest, latest_state, produce_digits, wait_for
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from test_distributed import TOLERANCE, _differences

from pegp_stream.config import DaemonConfig, to_config
from pegp_stream.core.learner import create_learner
from pegp_stream.drift import BoundaryPolicy
from pegp_stream.driver import StreamDriver
from pegp_stream.inputs.decode import decode_record
from pegp_stream.kafka.broker import free_port

RANKS = 2
PARTITIONS = 4


# what docs/operations.md tells a user to set for torchrun's restarts (a fresh rendezvous store for each)
RESTARTABLE = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def start_ranks(config: dict, tmp_path: Path, name: str, *options: str,
                env: dict[str, str] = RESTARTABLE) -> subprocess.Popen:
    """torchrun with RANKS learner ranks on this machine, as its own process (its log in tmp_path/name.log)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(RANKS),
               *options, "-m", "pegp_stream", "run", "--config", str(path)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **env})


def rank_batches(bootstrap: str, topic: str, batch_size: int) -> list[list]:
    """The global batches the ranks learn from a topic written before they start: each rank merges its partitions
    in (timestamp, partition, offset) order (as KafkaSource does) and takes batch_size records per step; a rank
    whose records ran out contributes none."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    ends, records = consumer.end_offsets(partitions), []
    while len(records) < sum(ends.values()):
        records += [r for batch in consumer.poll(timeout_ms=500).values() for r in batch]
    consumer.close()
    shares = [sorted((r for r in records if r.partition % RANKS == rank),
                     key=lambda r: (r.timestamp, r.partition, r.offset)) for rank in range(RANKS)]
    steps = max(-(-len(share) // batch_size) for share in shares)
    return [[r for share in shares for r in share[step * batch_size : (step + 1) * batch_size]]
            for step in range(steps)]


def one_rank_fed(config: DaemonConfig, batches: list[list]) -> dict:
    """The learner state one rank reaches fed `batches` through the driver, as the daemon feeds it."""
    learner = create_learner(config.learner)
    driver = StreamDriver(learner, BoundaryPolicy(config.drift))
    for batch in batches:
        samples = [decode_record(r.value, r.headers or [], config.decode) for r in batch]
        driver.learn([s.image for s in samples], [s.label for s in samples], [s.segment for s in samples],
                     driver.position)
    return learner.state_dict()


def scrape(url: str) -> dict[tuple[str, tuple], float] | None:
    """Every sample of a Prometheus text page, by name and sorted labels; None while nothing answers."""
    try:
        page = httpx.get(f"{url}/metrics", timeout=5)
    except httpx.TransportError:
        return None
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(page.text) for sample in family.samples}


def by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for (sample, labels), value in samples.items() if sample == name}


def test_two_ranks_under_torchrun_learn_every_record_once_and_as_one_rank_fed_the_global_batches(broker, tmp_path):
    """...and rank 0 serves the group's metrics: every partition's consumed count and lag (each rank's partitions),
    the records learned by both ranks, each rank's own gauges."""
    bootstrap = broker.bootstrap_servers
    ids = produce_digits(bootstrap, "ranked", limit_per_class=12, partitions=PARTITIONS)
    port = free_port()
    # idle for 8 s before exiting: time to scrape rank 0 once everything is learned
    config = daemon_config(tmp_path, bootstrap, "ranked", exit_when_idle_s=8.0,
                           http={"enabled": True, "host": "127.0.0.1", "port": port})
    # eps 0.99: the 0.999 energy cut can fall between near-equal eigenvalues (see test_ranks_lockstep.LEARNER)
    config["learner"] |= {"head": {"kind": "ncm"}, "projection": {"eps": 0.99}}
    ranks = start_ranks(config, tmp_path, "ranks")
    url = f"http://127.0.0.1:{port}"

    def all_learned() -> dict | None:
        assert ranks.poll() is None, (tmp_path / "ranks.log").read_text()[-3000:]  # exited before it was scraped
        samples = scrape(url)
        if samples is None or samples.get(("pegp_samples_learned_total", ())) != len(ids):
            return None
        return samples if sum(by_label(samples, "pegp_consumer_lag_records", "partition").values()) == 0 else None

    samples = wait_for(all_learned, 600, interval=0.2, what="all learned")
    every_partition = {str(p) for p in range(PARTITIONS)}
    consumed = by_label(samples, "pegp_samples_consumed_total", "partition")
    assert set(consumed) == every_partition and sum(consumed.values()) == len(ids), consumed
    assert set(by_label(samples, "pegp_consumer_lag_records", "partition")) == every_partition
    assert samples[("pegp_ranks", ())] == RANKS
    read = by_label(samples, "pegp_rank_samples_read_total", "rank")
    assert set(read) == {"0", "1"} and sum(read.values()) == len(ids), read
    assert set(by_label(samples, "pegp_rank_last_step_duration_seconds", "rank")) == {"0", "1"}
    model = httpx.get(f"{url}/v1/model", timeout=5).json()
    assert set(model["offsets"]) == every_partition and sum(model["offsets"].values()) == len(ids), model
    status = httpx.get(f"{url}/v1/status", timeout=5).json()
    assert status["records_learned"] == len(ids)
    assert [share["rank"] for share in status["learner_ranks"]] == [0, 1]
    assert ranks.wait(timeout=600) == 0, (tmp_path / "ranks.log").read_text()[-3000:]
    state = latest_state(tmp_path / "checkpoints")
    stats = state["stats"]
    assert stats["learned"] == len(ids) == 120  # every record once, by count and by id digest
    assert int(stats["learned_digest"]) == digest(ids)
    assert state["learner"]["counters"]["samples_learned"] == len(ids)
    prequential = state["prequential"]  # both ranks' predictions, as the metrics showed
    assert prequential["total"] == len(ids)
    assert samples[("pegp_prequential_accuracy", (("window", "cumulative"),))] == \
        pytest.approx(prequential["correct"] / prequential["total"])
    # every rank's offsets, each partition at its end (the topic holds these records alone)
    assert set(state["offsets"]) == {str(p) for p in range(PARTITIONS)}
    assert sum(state["offsets"].values()) == len(ids), state["offsets"]

    typed = to_config(DaemonConfig, config)
    reference = one_rank_fed(typed, rank_batches(bootstrap, "ranked", typed.kafka.batch_size))
    assert reference["counters"] == state["learner"]["counters"]  # same steps, same boundaries
    differences = _differences(reference, state["learner"])
    assert max(differences.values()) <= TOLERANCE, sorted(differences.items(), key=lambda item: -item[1])[:5]


def rank_process(torchrun: subprocess.Popen, rank: int) -> int | None:
    """The pid of the worker torchrun started for `rank` (its RANK environment variable), if running."""
    found = subprocess.run(["pgrep", "-P", str(torchrun.pid)], capture_output=True, text=True).stdout.split()
    for pid in map(int, found):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def test_a_rank_killed_mid_stream_comes_back_with_the_group_and_every_record_is_learned_once(broker, tmp_path):
    """SIGKILL of rank 1 after the first checkpoint: torchrun (--max-restarts 1) stops rank 0 and starts both
    again; they resume from rank 0's last checkpoint, and the final checkpoint holds every record once and the
    model of an uninterrupted run (the ranks cut the same global batches from the checkpointed offsets)."""
    bootstrap = broker.bootstrap_servers
    ids = produce_digits(bootstrap, "killed", limit_per_class=40, partitions=PARTITIONS)
    config = daemon_config(tmp_path, bootstrap, "killed", exit_when_idle_s=2.0)
    config["learner"] |= {"head": {"kind": "ncm"}, "projection": {"eps": 0.99}}
    # one restart must be enough: each restart gets a fresh rendezvous store (RESTARTABLE)
    ranks = start_ranks(config, tmp_path, "ranks", "--max-restarts", "1")
    checkpoints = tmp_path / "checkpoints"
    wait_for(lambda: checkpoints.is_dir() and any(p.suffix == ".safetensors" for p in checkpoints.iterdir()), 300,
             interval=0.05, what="a first checkpoint")
    victim = wait_for(lambda: rank_process(ranks, 1), 30, what="rank 1's process")
    os.kill(victim, signal.SIGKILL)
    at_kill = latest_state(checkpoints)["stats"]["learned"]
    assert ranks.wait(timeout=600) == 0, (tmp_path / "ranks.log").read_text()[-3000:]
    logged = (tmp_path / "ranks.log").read_text()
    assert at_kill < len(ids), "the kill landed after the stream's end: the test proved nothing"
    assert "restored ckpt-" in logged  # the group came back from a checkpoint
    state = latest_state(checkpoints)
    assert state["stats"]["learned"] == len(ids) == 400
    assert int(state["stats"]["learned_digest"]) == digest(ids)
    assert state["learner"]["counters"]["samples_learned"] == len(ids)
    assert sum(state["offsets"].values()) == len(ids)
    typed = to_config(DaemonConfig, config)
    reference = one_rank_fed(typed, rank_batches(bootstrap, "killed", typed.kafka.batch_size))
    assert reference["counters"] == state["learner"]["counters"]
    differences = _differences(reference, state["learner"])
    assert max(differences.values()) <= TOLERANCE, sorted(differences.items(), key=lambda item: -item[1])[:5]


def test_torchrun_restarts_over_a_shared_store_fail_at_start_naming_the_setting(tmp_path):
    """torchrun --max-restarts hands its workers the store it keeps across restarts unless
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: a restart would meet the last attempt's keys. Every rank says so in one
    line before it joins (no broker needed), and torchrun gives up after its restarts."""
    config = daemon_config(tmp_path, "127.0.0.1:1", "unused")
    ranks = start_ranks(config, tmp_path, "shared", "--max-restarts", "1",
                        env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "0"})
    assert ranks.wait(timeout=300) != 0
    logged = (tmp_path / "shared.log").read_text()
    said = "error: TORCH_DISABLE_SHARE_RDZV_TCP_STORE: torchrun with --max-restarts needs a fresh store"
    assert logged.count(said) == RANKS * 2, logged  # each rank, on the first start and on the restart
    assert "pegp_stream/" not in logged, logged  # no traceback from our code (torchrun prints its own)
