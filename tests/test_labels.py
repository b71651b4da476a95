"""One rule for labels wherever they enter (issue 9, item 20): an integer, or text spelling one canonically,
is an int; anything else is text. So the JSON label 7 and the header label "7" are one class."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import digits_segment, tiny_config
from daemon_support import daemon_config, latest_state, typed
from kafka import KafkaProducer

from pegp_stream import create_learner
from pegp_stream.config import StreamConfig
from pegp_stream.daemon import Daemon
from pegp_stream.data.datasets import load_dataset
from pegp_stream.data.streams import build_stream
from pegp_stream.inputs.decode import canonical_label, decode_record
from pegp_stream.inputs.encode import encode_record
from pegp_stream.kafka.broker import EmbeddedBroker, free_port


@pytest.mark.parametrize(("label", "canonical"), [
    (7, 7), ("7", 7), ("0", 0), ("-3", -3), (np.int64(4), 4), (str(2**63 - 1), 2**63 - 1),
    ("07", "07"), ("+7", "+7"), (" 7", " 7"), ("7.0", "7.0"), ("-0", "-0"), ("seven", "seven"),
    ("\u0667", "\u0667"),  # an Arabic-Indic digit: not ASCII, stays text
    (str(2**63), str(2**63)),  # beyond int64: stays text
])
def test_canonical_label(label, canonical):
    result = canonical_label(label)
    assert result == canonical and type(result) is type(canonical)


@pytest.mark.parametrize("fmt", ["json", "binary"])
def test_both_record_forms_decode_a_digit_label_to_the_int(fmt):
    image = np.zeros((4, 4), np.uint8)
    assert decode_record(*encode_record(image, "7", fmt=fmt)).label == 7
    assert decode_record(*encode_record(image, 7, fmt=fmt)).label == 7
    assert decode_record(*encode_record(image, "07", fmt=fmt)).label == "07"


def test_learn_many_takes_labels_in_canonical_form():
    learner = create_learner(tiny_config("adapter"))
    images, _ = digits_segment((3, 7), 4)
    learner.learn_many(images, [3, "3", "7", np.int64(7)])
    assert learner.classes == [3, 7]


def test_a_learner_state_with_text_digits_loads_them_canonical():
    """States written before the rule hold header labels as text: they must keep meaning the same classes."""
    learner = create_learner(tiny_config("adapter"))
    images, _ = digits_segment((3, 7), 4)
    learner.learn_many(images, [3, 3, 7, 7])
    state = learner.state_dict()
    state["classes"] = ["3", "7"]
    resumed = create_learner(tiny_config("adapter"))
    resumed.load_state_dict(state)
    resumed.learn_many(images, [3, 3, 7, 7])
    assert resumed.classes == [3, 7]


def test_data_set_streams_carry_canonical_labels():
    stream = build_stream(StreamConfig(datasets=("digits",), limit_per_class=1))
    assert sorted(record.label for record in stream) == list(range(10))


def test_json_number_and_header_string_labels_are_one_class_through_the_broker(tmp_path):
    digits = load_dataset("digits", split="train")
    with EmbeddedBroker(port=free_port()) as broker:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        seen: set[int] = set()
        for i in range(20):
            image, digit = digits.images[i], int(digits.labels[i])
            # each digit first as a header string (binary form), then as a JSON number
            value, headers = (encode_record(image, digit, id=f"r{i}") if digit in seen
                              else encode_record(image, str(digit), id=f"r{i}", fmt="binary"))
            seen.add(digit)
            producer.send("labels", value=value, headers=headers)
        producer.flush()
        producer.close()
        config = daemon_config(tmp_path, broker.bootstrap_servers, "labels")
        assert Daemon(typed(config)).run() == 0
    state = latest_state(tmp_path / "checkpoints")
    assert state["stats"]["learned"] == 20 and not state["stats"]["dead_letters"]
    classes = state["learner"]["classes"]
    assert len(set(digits.labels[:20].tolist())) < 20  # some digits did come in both forms
    assert len(classes) == len(seen) and set(classes) == seen
