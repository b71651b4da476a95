"""Property-based fuzzing of the HTTP API from its own OpenAPI spec (schemathesis): no 5xx, responses that
match the spec. Runs in-process against the ASGI app with a real snapshot of a tiny learner."""

from __future__ import annotations

import schemathesis
from conftest import digits_segment, tiny_config
from hypothesis import HealthCheck, settings
from schemathesis import checks

from pegp_stream import create_learner
from pegp_stream.config import HttpConfig
from pegp_stream.serving.app import create_app
from pegp_stream.serving.snapshot import SnapshotPublisher


def _app():
    learner = create_learner(tiny_config("adapter"))
    images, labels = digits_segment((0, 1), 8)
    learner.learn_many(images, labels)
    snapshots = SnapshotPublisher()
    snapshots.publish(learner, records_learned=8)
    return create_app(HttpConfig(max_instances=4, max_body_bytes=100_000), snapshots)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_spec(case):
    # A schema-valid string need not be a decodable image, so a 400 for it is correct: the check that
    # every schema-valid request is accepted does not apply here. Everything else does.
    case.call_and_validate(checks=[checks.not_a_server_error, checks.status_code_conformance,
                                   checks.content_type_conformance, checks.response_schema_conformance,
                                   checks.negative_data_rejection])
