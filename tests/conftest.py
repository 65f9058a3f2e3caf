from __future__ import annotations

import os

import pytest
from django.conf import settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

os.environ.setdefault("CHAT_SKIP_STARTUP_SWEEP", "1")


def on_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


def on_redis() -> bool:
    return bool(settings.REDIS_URL)


requires_postgres = pytest.mark.skipif(not on_postgres(), reason="needs DATABASE_URL on PostgreSQL (run by .ci/run)")
requires_redis = pytest.mark.skipif(not on_redis(), reason="needs REDIS_URL (run by .ci/run)")


@pytest.fixture(scope="session", autouse=True)
def _engine_stops_before_the_test_database_goes(django_db_setup):  # type: ignore[no-untyped-def]
    """The engine's database threads keep their connections: close them before the test database is dropped."""
    yield
    from chat.engine.process import engine

    engine.close()


@pytest.fixture(autouse=True)
def _fast_settings(settings):  # type: ignore[no-untyped-def]
    """Quick demo replies, and no write throttling or per-user budget unless a test asks for it."""
    from django.core.cache import cache

    cache.clear()
    # One user runs tens of turns at once in the concurrency tests: the per-user budgets are tested on their own.
    settings.CHAT = {
        **settings.CHAT, "DEMO_DELTA_DELAY": 0.0, "DEMO_SLOW_DELAY": 0.02,
        "TURNS_PER_MINUTE": 0, "MAX_REPLIES_PER_USER": 0, "WS_MAX_SOCKETS_PER_USER": 0,
        # The credential recheck's queries would land in the query-count tests; its own test sets it short.
        "WS_AUTH_RECHECK_SECONDS": 3600.0,
    }
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"writes": "100000/min", "login": "100000/min", "search": "100000/min"}}
    yield


@pytest.fixture(autouse=True)
def _default_agents(request):  # type: ignore[no-untyped-def]
    """Transactional tests flush tables, the seeded default agents too: put them back."""
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        return
    transactional = marker.kwargs.get("transaction", False) or (marker.args and marker.args[0])
    request.getfixturevalue("transactional_db" if transactional else "db")
    from importlib import import_module

    from chat.models import Agent

    seed = import_module("chat.migrations.0003_default_agents")
    for data in seed.DEFAULT_AGENTS:
        Agent.objects.get_or_create(slug=data["slug"], defaults={**data, "provider": "demo"})


@pytest.fixture
def token(user) -> str:  # type: ignore[no-untyped-def]
    """alice's API token, for sockets opened with `Authorization: Token`."""
    from tests.ws import token_for

    return token_for(user)


@pytest.fixture
def make_user(db):  # type: ignore[no-untyped-def]
    from django.contrib.auth.models import User

    counter = {"n": 0}

    def make(username: str | None = None, password: str = "pw-Secret-123") -> User:
        counter["n"] += 1
        return User.objects.create_user(username or f"user{counter['n']}", password=password)

    return make


@pytest.fixture
def user(make_user):  # type: ignore[no-untyped-def]
    return make_user("alice")


@pytest.fixture
def other_user(make_user):  # type: ignore[no-untyped-def]
    return make_user("bob")


@pytest.fixture
def api(user) -> APIClient:  # type: ignore[no-untyped-def]
    """A DRF client authenticated with alice's token."""
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def other_api(other_user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=other_user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


from tests.live import daphne_server  # noqa: E402,F401  (fixture)
from tests.webhook import webhook  # noqa: E402,F401  (fixture)
