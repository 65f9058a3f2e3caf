from __future__ import annotations

import pytest
from django.core.cache import cache

from tests.api import SESSIONS, assert_error, create_session, messages_url, send

pytestmark = pytest.mark.django_db


@pytest.fixture
def three_writes_a_minute(settings):  # type: ignore[no-untyped-def]
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"writes": "3/min"}}
    cache.clear()
    yield
    cache.clear()


def test_the_fourth_write_in_a_minute_is_429_throttled(api, three_writes_a_minute):
    session = create_session(api)
    assert send(api, session["id"], "one").status_code == 201
    assert send(api, session["id"], "two").status_code == 201
    response = send(api, session["id"], "three")
    body = assert_error(response, 429, "throttled")
    assert isinstance(body["retry_after"], int) and 0 <= body["retry_after"] <= 60
    assert api.get(messages_url(session["id"])).json()["total_count"] == 2


def test_reads_are_not_throttled(api, three_writes_a_minute):
    session = create_session(api)
    for _ in range(3):
        send(api, session["id"])
    for _ in range(10):
        assert api.get(SESSIONS).status_code == 200
        assert api.get(messages_url(session["id"])).status_code == 200


def test_the_write_limit_is_per_user(api, other_api, three_writes_a_minute):
    for _ in range(3):
        create_session(api)
    assert_error(api.post(SESSIONS, {}, format="json"), 429, "throttled")
    assert other_api.post(SESSIONS, {}, format="json").status_code == 201
