"""Two "machines": two separate `torchrun --nnodes 2 --nproc-per-node 1` launches that meet through torchrun's c10d
rendezvous (as deploy/k8s/learner-ranks.yaml runs them, one per pod), each with its own config file and its own
checkpoint folder (no shared volume). They learn a 4-partition topic of the real embedded broker as one learner:
every record once, and the learner rank 0 writes is the one a single rank fed the same global batches reaches.
The rendezvous decides which launch holds rank 0; only that one's folder gets checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from daemon_support import daemon_config, digest, latest_state, produce_digits
from test_daemon_ranks import PARTITIONS, one_rank_fed, rank_batches
from test_distributed import TOLERANCE, _differences

from pegp_stream.config import DaemonConfig, to_config
from pegp_stream.kafka.broker import free_port


def start_node(config: dict, folder: Path, endpoint: str) -> subprocess.Popen:
    """One node's torchrun, run from its own folder with its own config, joining the rendezvous at `endpoint`."""
    folder.mkdir()
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(folder / "node.log", "ab")  # noqa: SIM115 - handed to the child
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "multinode-test",
               "-m", "pegp_stream", "run", "--config", str(path)]
    return subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_two_nodes_meet_by_c10d_rendezvous_and_learn_as_one_learner_without_a_shared_volume(broker, tmp_path):
    bootstrap = broker.bootstrap_servers
    ids = produce_digits(bootstrap, "nodes", limit_per_class=12, partitions=PARTITIONS)
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = []
    for name in ("a", "b"):
        config = daemon_config(tmp_path / name, bootstrap, "nodes", exit_when_idle_s=2.0)
        config["learner"] |= {"head": {"kind": "ncm"}, "projection": {"eps": 0.99}}  # as test_daemon_ranks
        nodes.append((tmp_path / name, config, start_node(config, tmp_path / name, endpoint)))
    for folder, _, process in nodes:
        assert process.wait(timeout=600) == 0, (folder / "node.log").read_text()[-3000:]

    written = [folder for folder, _, _ in nodes if any((folder / "checkpoints").glob("*.safetensors"))]
    assert len(written) == 1, "exactly one node (the one holding rank 0) writes checkpoints"
    state = latest_state(written[0] / "checkpoints")
    assert state["stats"]["learned"] == len(ids) == 120
    assert int(state["stats"]["learned_digest"]) == digest(ids)
    assert set(state["offsets"]) == {str(p) for p in range(PARTITIONS)}
    assert sum(state["offsets"].values()) == len(ids)

    typed = to_config(DaemonConfig, nodes[0][1])
    reference = one_rank_fed(typed, rank_batches(bootstrap, "nodes", typed.kafka.batch_size))
    assert reference["counters"] == state["learner"]["counters"]
    differences = _differences(reference, state["learner"])
    assert max(differences.values()) <= TOLERANCE, sorted(differences.items(), key=lambda item: -item[1])[:5]
