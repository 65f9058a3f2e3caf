"""Password guessing: every sign-in path locks an address out after repeated failures."""

from __future__ import annotations

import pytest
from django.core.cache import cache

pytestmark = pytest.mark.django_db

RIGHT = "right-Password-1"


@pytest.fixture(autouse=True)
def _few_failures(settings, make_user):  # type: ignore[no-untyped-def]
    cache.clear()
    settings.AXES_FAILURE_LIMIT = 3
    # The per-address throttle of the token endpoint is not what is tested here.
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"writes": "1000/min", "login": "1000/min"}}
    carol = make_user("carol", password=RIGHT)
    carol.is_staff = carol.is_superuser = True
    carol.save()


def token(client, password: str, **headers: str) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/auth/token/", {"username": "carol", "password": password}, content_type="application/json", headers=headers)
    return response.status_code, response.json()


def test_the_token_endpoint_locks_out_an_address_and_a_forged_forwarded_for_does_not_help(client):  # type: ignore[no-untyped-def]
    codes = [token(client, f"wrong-{i}", x_forwarded_for=f"203.0.113.{i}")[0] for i in range(3)]
    assert codes == [400, 400, 429]
    status, body = token(client, RIGHT, x_forwarded_for="198.51.100.7")
    assert status == 429 and body["code"] == "throttled" and "Try again in 15 minutes" in body["detail"]
    # Another address is not locked out.
    other = client.post("/api/v1/auth/token/", {"username": "carol", "password": RIGHT}, content_type="application/json", REMOTE_ADDR="192.0.2.44")
    assert other.status_code == 200


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_the_login_pages_lock_out_an_address(client, path):  # type: ignore[no-untyped-def]
    codes = [client.post(path, {"username": "carol", "password": f"wrong-{i}"}).status_code for i in range(3)]
    assert codes == [200, 200, 429]
    locked = client.post(path, {"username": "carol", "password": RIGHT})
    assert locked.status_code == 429 and b"Too many failed sign-ins" in locked.content
    assert "_auth_user_id" not in client.session  # the right password did not sign in
    assert client.get("/api/v1/sessions/").status_code in (401, 403)


def test_a_success_before_the_limit_starts_the_count_again(client):  # type: ignore[no-untyped-def]
    assert [token(client, "wrong")[0] for _ in range(2)] == [400, 400]
    assert token(client, RIGHT)[0] == 200
    assert [token(client, "wrong")[0] for _ in range(2)] == [400, 400]


def test_behind_trusted_proxies_the_address_is_the_one_the_proxy_saw(client, settings):  # type: ignore[no-untyped-def]
    settings.TRUSTED_PROXIES = 1
    # A client's own X-Forwarded-For entries come first; our proxy appends the address it saw.
    for i in range(3):
        token(client, "wrong", x_forwarded_for=f"10.9.9.{i}, 203.0.113.5")
    assert token(client, RIGHT, x_forwarded_for="203.0.113.5")[0] == 429
    assert token(client, RIGHT, x_forwarded_for="203.0.113.6")[0] == 200


def test_the_token_throttle_is_keyed_on_the_peer_not_on_a_forged_header(client, settings):  # type: ignore[no-untyped-def]
    settings.AXES_FAILURE_LIMIT = 1000
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"writes": "1000/min", "login": "3/min"}}
    codes = [token(client, "wrong", x_forwarded_for=f"203.0.113.{i}")[0] for i in range(4)]
    assert codes == [400, 400, 400, 429]
