"""Schemathesis against our own OpenAPI schema: every operation, signed in, generated requests.

No request may be a server error, and every answer must match the schema (status code, content
type, body). The schema is the one `/api/v1/schema/` serves (drf-spectacular), built here without a
request; requests go to the WSGI application inside the test's transaction. Bounded: FUZZ_EXAMPLES
cases per operation (environment, default 30), derandomised so a run is repeatable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.ws import token_for

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))

_raw = json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))
schema = schemathesis.openapi.from_dict(_raw)
schema.app = get_wsgi_application()
schema.location = "/api/v1/schema/"

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance, negative_data_rejection]


@pytest.fixture
def credentials(user) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    # As Django's test client does: the handler must not close the test's connection after each request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield {"Authorization": f"Token {token_for(user)}"}
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.mark.django_db
@schema.parametrize()
@hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_within_its_schema_and_never_with_a_server_error(case, credentials):  # type: ignore[no-untyped-def]
    response = case.call(headers=credentials)
    case.validate_response(response, checks=CHECKS)
