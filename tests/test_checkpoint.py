"""Checkpoint files: exact round trip, atomic writes, pruning, and recovery from a corrupt newest file."""

from __future__ import annotations

import logging

import pytest
import torch
from test_conformance import assert_state_equal

from pegp_stream.checkpoint import CheckpointStore, decode_state, encode_state
from pegp_stream.errors import CheckpointError

STATE = {
    "tensors": {"a": torch.arange(6, dtype=torch.float64).reshape(2, 3), "scalar": torch.tensor(3),
                "empty": torch.zeros(0, 4), "bytes": torch.tensor([1, 2, 255], dtype=torch.uint8)},
    "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}, 1: {}}, "param_groups": [{"betas": (0.9, 0.99)}]},
    "labels": [3, "cat", None, 2.5, True],
    "offsets": {"0": 17},
}


def test_round_trip_keeps_types_and_values():
    restored = decode_state(encode_state(STATE))
    assert_state_equal(STATE, restored)
    assert isinstance(restored["optimizer"]["param_groups"][0]["betas"], tuple)
    assert list(restored["optimizer"]["state"]) == [0, 1]


def test_store_keeps_the_newest_and_leaves_no_partial_files(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for step in range(4):
        store.save({**STATE, "offsets": {"0": step}})
    names = [p.name for p in store.paths()]
    assert names == ["ckpt-000000000003.safetensors", "ckpt-000000000004.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert store.load_latest().state["offsets"] == {"0": 3}


@pytest.mark.parametrize("damage", ["truncate", "flip-tensor-byte", "garbage"])
def test_corrupt_newest_is_reported_and_the_previous_used(tmp_path, caplog, damage):
    store = CheckpointStore(tmp_path, keep=3)
    store.save({**STATE, "offsets": {"0": 1}})
    newest = store.save({**STATE, "offsets": {"0": 2}})
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip-tensor-byte":
        data[-3] ^= 0xFF  # inside the last tensor's bytes: only the checksum can notice
    else:
        data = bytearray(b"\x00" * 64)
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR):
        checkpoint = store.load_latest()
    assert checkpoint.state["offsets"] == {"0": 1} and checkpoint.sequence == 1
    assert newest.name in caplog.text and "corrupt" in caplog.text


def test_decoding_refuses_foreign_files():
    from safetensors.torch import save

    with pytest.raises(CheckpointError, match="not a pegp-stream checkpoint"):
        decode_state(save({"x": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="cannot store"):
        encode_state({"x": object()})


def test_only_the_writer_removes_partial_files_a_reader_leaves_a_write_in_progress(tmp_path):
    """A serving replica opening the learner's directory must not delete the checkpoint being written."""
    from pegp_stream.serving.follow import DirectoryCheckpoints

    in_progress = tmp_path / "ckpt-000000000007.safetensors.partial"
    in_progress.write_bytes(b"half a checkpoint")
    CheckpointStore(tmp_path)
    DirectoryCheckpoints(tmp_path).fetch_new()
    assert in_progress.exists()
    CheckpointStore(tmp_path).remove_interrupted_writes()  # what the daemon does at its start
    assert not in_progress.exists()
