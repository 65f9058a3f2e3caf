"""Operations: health, metrics, the local user the run command creates."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command


def test_healthz_is_ok_when_database_and_layer_answer(client, db):  # type: ignore[no-untyped-def]
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "channel_layer": "ok"}


def test_healthz_is_503_when_redis_does_not_answer(client, db, settings):  # type: ignore[no-untyped-def]
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["channel_layer"].startswith("error")


def test_metrics_expose_request_and_turn_counters(client, db):  # type: ignore[no-untyped-def]
    client.get("/healthz")
    body = client.get("/metrics").content.decode()
    assert "chat_http_requests_total" in body
    assert "chat_turns_started_total" in body
    assert "chat_open_sockets" in body


def test_local_user_is_created_once_with_its_password_in_a_private_file(db, capsys, tmp_path):  # type: ignore[no-untyped-def]
    User.objects.all().delete()
    secret = tmp_path / "pw"
    call_command("ensure_local_user", "--password-file", str(secret))
    out = capsys.readouterr().out
    assert "Created the local user 'admin'" in out and str(secret) in out
    password = secret.read_text().strip()
    assert password not in out  # never on the terminal or in a container's log
    assert secret.stat().st_mode & 0o777 == 0o600
    user = User.objects.get(username="admin")
    assert user.is_superuser and user.check_password(password)
    call_command("ensure_local_user", "--password-file", str(secret))
    assert capsys.readouterr().out == ""
    assert User.objects.count() == 1


@pytest.mark.parametrize("path", ["/", "/api/v1/sessions/"])
def test_anonymous_visitors_get_no_data(client, db, path):  # type: ignore[no-untyped-def]
    response = client.get(path)
    assert response.status_code in (302, 401)
    if response.status_code == 302:
        assert response["Location"].startswith("/accounts/login/")


def test_password_attempts_at_the_token_endpoint_are_throttled(client, db, settings, make_user):  # type: ignore[no-untyped-def]
    from django.core.cache import cache

    cache.clear()
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"writes": "1000/min", "login": "3/min"}}
    make_user("carol", password="right-Password-1")
    codes = [
        client.post("/api/v1/auth/token/", {"username": "carol", "password": f"wrong-{i}"}, content_type="application/json").status_code
        for i in range(4)
    ]
    assert codes == [400, 400, 400, 429]
    assert client.post("/api/v1/auth/token/", {"username": "carol", "password": "right-Password-1"},
                       content_type="application/json").status_code == 429


def test_metrics_labels_do_not_grow_with_made_up_methods(client, db):  # type: ignore[no-untyped-def]
    for method in ("X0ZZ", "X1ZZ", "X2ZZ"):
        client.generic(method, "/healthz")
    body = client.get("/metrics").content.decode()
    assert "X0ZZ" not in body and 'method="other"' in body


def test_metrics_can_ask_for_a_bearer_token(client, db, settings):  # type: ignore[no-untyped-def]
    settings.METRICS_TOKEN = "s3cret-metrics"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    answered = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics")
    assert answered.status_code == 200 and "chat_open_sockets" in answered.content.decode()


def test_the_default_allowed_hosts_are_local_only() -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ALLOWED_HOSTS"} | {"SECRET_KEY": "x" * 50}
    out = subprocess.run(
        [sys.executable, "-c", "import chatproject.settings as s; print(','.join(s.ALLOWED_HOSTS))"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert out == "localhost,127.0.0.1,[::1]"


@pytest.mark.django_db(transaction=True)
async def test_an_http_request_makes_one_trip_from_the_event_loop_to_its_thread(user, token, monkeypatch):  # type: ignore[no-untyped-def]
    """The middleware chain and a sync view run in one call on the request's thread (chatproject.handler).

    Django's own ASGI handler sends each middleware's process_request and process_response to the
    thread separately (about a dozen trips per request); here a request costs the chain's one trip
    plus the request_started and request_finished signals'. The responses are Django's as ever: a
    DRF view through the whole middleware stack, an error, and the async /healthz view.
    """
    import json

    from asgiref import sync
    from channels.testing import HttpCommunicator

    from chatproject.asgi import application

    trips = {"count": 0}
    original = sync.SyncToAsync.__call__

    async def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        trips["count"] += 1
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(sync.SyncToAsync, "__call__", counted)
    auth = [(b"authorization", f"Token {token}".encode()), (b"host", b"127.0.0.1")]

    listed = await HttpCommunicator(application, "GET", "/api/v1/sessions/", headers=auth).get_response()
    assert listed["status"] == 200 and json.loads(listed["body"])["results"] == []
    assert (b"x-frame-options", b"DENY") in [(k.lower(), v) for k, v in listed["headers"]]  # the middleware ran
    assert trips["count"] <= 3, trips

    trips["count"] = 0
    missing = await HttpCommunicator(application, "GET", "/api/v1/sessions/00000000-0000-0000-0000-000000000000/", headers=auth).get_response()
    assert missing["status"] == 404 and json.loads(missing["body"])["code"] == "not_found"
    assert trips["count"] <= 4, trips  # and the 404 is logged, on a thread of its own

    health = await HttpCommunicator(application, "GET", "/healthz", headers=[(b"host", b"127.0.0.1")]).get_response()
    assert health["status"] == 200 and json.loads(health["body"])["status"] == "ok"
