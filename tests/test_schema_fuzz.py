"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (schemathesis, in
process): every operation, generated valid and invalid inputs, and every answer checked against the
document with every check schemathesis has — no 5xx, only documented status codes and media types,
bodies that match their schemas, ``Allow`` on 405s, no schema-valid request refused as invalid.
Derandomized, so a failure reproduces."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.config import SchemathesisConfig
from starlette.testclient import TestClient

from service.api import create_app
from service.settings import Settings

from .helpers import make_store

pytestmark = pytest.mark.slow


def _app():
    import tempfile
    from pathlib import Path

    store = make_store(Path(tempfile.mkdtemp(prefix="posekd-fuzz-")) / "store")
    settings = Settings(model_store=store.root, default_pose_model="tiny-pose", default_detector="tiny-det",
                        store_poll_s=0, max_delay_ms=2, api_keys=[], admin_api_keys=[], ort_intra_threads=1,
                        min_score=0.0)
    app = create_app(settings)
    client = TestClient(app)
    client.__enter__()  # run the lifespan once: models loaded, broker started
    return app


APP = _app()
# Every check schemathesis has (its CLI's `--checks all`). A request the schema calls valid must never be
# refused as invalid (422): besides success it may meet 404 (a well-formed name of a model or job that
# does not exist), 409 (a job not finished), and, for uploads, 400/413/415 (bytes that are no image or
# clip, or are too large or of another type: content no schema can describe).
CONFIG = SchemathesisConfig.from_dict({"checks": {"positive_data_acceptance": {
    "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "413", "415", "429", "503"]}}})
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)


@schema.parametrize()
@hypothesis_settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_within_its_documented_contract(case):
    case.call_and_validate()
