"""Hostile users: tools bounded in cost, outbound requests only where an operator allowed."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from chat.models import ToolCall
from sessions_app.services import session_create
from tests.webhook import WebhookReceiver
from tests.ws import db, frames_until, next_frame, open_socket, send

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def session(user):  # type: ignore[no-untyped-def]
    return session_create(owner=user, title="Security")


async def tool_turn(session: Any, token: str, tool: str, arguments: str, approve: bool = False) -> tuple[str, ToolCall]:
    """One `/tool` turn over the socket (approved when it asks); the reply's text and the saved call."""
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": f"/tool {tool} {arguments}"})
    if approve:
        request = (await frames_until(comm, "approval.requested"))[-1]
        await send(comm, {"type": "hitl_decision", "approval_id": request["approval_id"], "decision": "approve"})
    # The reply the demo provider writes once the tool has answered.
    frames = await frames_until(comm, "message.completed", where=lambda f: f["message"]["content"].startswith("Here is what the tools said"))
    await comm.disconnect()
    call = await db(lambda: ToolCall.objects.filter(session=session).latest("created_at"))
    return frames[-1]["message"]["content"], call


# calculator: every expression answers at once, with a result or a clear error -----------------

@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("round(1, -10**900)", "round: the number of digits"),
        ("round(1, -10**7)", "round: the number of digits"),
        ("round(1.5, 0.5)", "must be an integer"),
        ("9**9**9", "too large"),
        ("2**3001", "too large"),
        ("(10**300)*(10**300)*(10**300)*(10**300)", "too large"),
        ("(-8)**0.5", "not a real number"),
        ("1.5**100000", "Exponent too large"),
        ("max()", "takes 1 to 10"),
        ("sqrt(2**2999)", "sqrt"),
    ],
)
async def test_costly_or_odd_expressions_fail_the_call_at_once(session, token, expression, error):  # type: ignore[no-untyped-def]
    text, call = await tool_turn(session, token, "calculator", f'{{"expression": "{expression}"}}')
    assert call.status == "failed" and error in str(call.output), call.output
    assert error in text


@pytest.mark.parametrize(
    ("expression", "result"),
    [("round(2**0.5, 3) + 2**10 - max(1, 2)", 1023.414), ("2**100 + 1", 2**100 + 1), ("floor(1e300) % 7", int(1e300) % 7)],
)
async def test_ordinary_expressions_still_answer(session, token, expression, result):  # type: ignore[no-untyped-def]
    text, call = await tool_turn(session, token, "calculator", f'{{"expression": "{expression}"}}')
    assert call.status == "done" and call.output["result"] == result
    assert "calculator returned" in text


# webhook_post: only allowed origins, only public addresses, one lookup -----------------------

async def test_by_default_the_webhook_reaches_nothing_even_when_approved(session, token, settings):  # type: ignore[no-untyped-def]
    assert settings.CHAT["WEBHOOK_ALLOWED_ORIGINS"] == []
    own = WebhookReceiver()  # a service on the server's own host, as /healthz would be
    try:
        text, call = await tool_turn(session, token, "webhook_post", f'{{"url": "{own.url}"}}', approve=True)
    finally:
        own.close()
    assert call.status == "failed" and "Not allowed" in str(call.output) and "Allowed: none" in str(call.output)
    assert "webhook_post failed: Not allowed" in text
    assert own.bodies == []


async def test_another_port_of_an_allowed_host_is_refused(session, token, webhook):  # type: ignore[no-untyped-def]
    other = WebhookReceiver()
    try:
        text, call = await tool_turn(session, token, "webhook_post", f'{{"url": "{other.url}"}}', approve=True)
    finally:
        other.close()
    assert call.status == "failed" and "Not allowed" in str(call.output) and "webhook_post failed" in text
    assert other.bodies == [] and webhook.bodies == []


async def test_a_name_that_resolves_to_loopback_is_refused(session, token, webhook, monkeypatch, settings):  # type: ignore[no-untyped-def]
    port = webhook.server.server_address[1]
    monkeypatch.setitem(settings.CHAT, "WEBHOOK_ALLOWED_ORIGINS", [f"http://localhost:{port}"])
    text, call = await tool_turn(session, token, "webhook_post", f'{{"url": "http://localhost:{port}/hook"}}', approve=True)
    assert call.status == "failed" and "not a public address" in str(call.output) and "webhook_post failed" in text
    assert webhook.bodies == []


async def test_the_name_is_resolved_once_and_the_checked_address_is_the_one_reached(session, token, webhook, monkeypatch, settings):  # type: ignore[no-untyped-def]
    port = webhook.server.server_address[1]
    name = "hooks.example.test"
    monkeypatch.setitem(settings.CHAT, "WEBHOOK_ALLOWED_ORIGINS", [f"http://{name}:{port}"])
    monkeypatch.setitem(settings.CHAT, "WEBHOOK_ALLOWED_NETWORKS", ["127.0.0.0/8"])
    lookups: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, *args, **kwargs)
        lookups.append(host)
        # First answer: the allowed loopback receiver; any later lookup would land elsewhere.
        address = "127.0.0.1" if len(lookups) == 1 else "10.255.255.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    text, call = await tool_turn(session, token, "webhook_post", f'{{"url": "http://{name}:{port}/hook", "payload": {{"k": 1}}}}', approve=True)
    assert call.status == "done" and call.output["status"] == 200, call.output
    assert lookups == [name] and "webhook_post returned" in text
    assert webhook.bodies == [{"k": 1}] and webhook.hosts == [f"{name}:{port}"]


def test_a_malformed_allow_list_stops_the_start() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from chatproject.settings import webhook_networks, webhook_origins

    assert webhook_origins(" https://hooks.example.com , http://10.0.0.5:8080/ ") == ["https://hooks.example.com", "http://10.0.0.5:8080"]
    for bad in ("hooks.example.com", "ftp://x", "http://x:99999", "http://x/path"):
        with pytest.raises(ImproperlyConfigured):
            webhook_origins(bad)
    with pytest.raises(ImproperlyConfigured):
        webhook_networks("10.0.0.0/33")


def test_the_secret_key_file_is_made_once_with_mode_0600(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ProcessPoolExecutor

    from chatproject.settings import read_or_create_secret

    path = tmp_path / ".secret_key"
    with ProcessPoolExecutor(8) as pool:  # processes starting together, as daphne processes do
        keys = list(pool.map(read_or_create_secret, [path] * 40))
    assert len(set(keys)) == 1 and len(keys[0]) >= 50
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [".secret_key"]  # no temporary file left behind


async def test_resync_is_limited_on_its_own(session, token, settings):  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "WS_RESYNCS_PER_MINUTE": 12, "WS_FRAMES_PER_SECOND": 1000}
    comm = await open_socket(session.pk, token=token)
    assert (await next_frame(comm))["type"] == "session.ready"
    for i in range(4):
        await send(comm, {"type": "resync", "request_id": i})
    answers = [await next_frame(comm) for _ in range(4)]
    assert [f["type"] for f in answers] == ["session.ready"] * 3 + ["error"]
    assert (answers[3]["code"], answers[3]["request_id"]) == ("rate_limited", 3)
    await send(comm, {"type": "ping"})
    assert (await next_frame(comm))["type"] == "pong"  # other frames go on
    await comm.disconnect()


# sockets lose their authorisation with their credentials ---------------------------------------

async def _closed_with(comm, code: int) -> bool:  # type: ignore[no-untyped-def]
    while True:
        output = await comm.receive_output(timeout=10)
        if output["type"] == "websocket.close":
            return output.get("code") == code


async def test_deleting_a_token_closes_its_sockets_and_only_those(session, user, token):  # type: ignore[no-untyped-def]
    from rest_framework.authtoken.models import Token

    by_token = await open_socket(session.pk, token=token)
    await next_frame(by_token)
    await db(lambda: Token.objects.filter(key=token).delete())
    assert await _closed_with(by_token, 4401)
    # A new token works again.
    fresh = await db(lambda: Token.objects.create(user=user).key)
    again = await open_socket(session.pk, token=fresh)
    assert (await next_frame(again))["type"] == "session.ready"
    await again.disconnect()


async def test_signing_out_closes_the_cookie_sockets_of_that_sign_in(session, user, token, client):  # type: ignore[no-untyped-def]
    from channels.testing import WebsocketCommunicator

    from chatproject.asgi import application

    await db(client.force_login, user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    headers = [(b"cookie", cookie), (b"origin", b"http://localhost:8000"), (b"host", b"localhost:8000")]
    by_cookie = WebsocketCommunicator(application, f"/ws/sessions/{session.pk}/", headers=headers)
    assert (await by_cookie.connect())[0]
    assert (await next_frame(by_cookie))["type"] == "session.ready"
    by_token = await open_socket(session.pk, token=token)
    await next_frame(by_token)
    assert (await db(client.post, "/accounts/logout/")).status_code == 302
    assert await _closed_with(by_cookie, 4401)
    await send(by_token, {"type": "ping"})
    assert (await next_frame(by_token))["type"] == "pong"  # the token was not signed out
    await by_token.disconnect()


async def test_deactivating_a_user_closes_all_their_sockets(session, user, token):  # type: ignore[no-untyped-def]
    sockets = [await open_socket(session.pk, token=token) for _ in range(12)]
    for comm in sockets:
        await next_frame(comm)

    def deactivate() -> None:
        user.is_active = False
        user.save()

    await db(deactivate)
    assert all([await _closed_with(comm, 4401) for comm in sockets])


async def test_a_credential_removed_behind_the_servers_back_is_found_by_the_recheck(session, user, token, settings):  # type: ignore[no-untyped-def]
    from django.db import connection

    settings.CHAT = {**settings.CHAT, "WS_AUTH_RECHECK_SECONDS": 0.2}
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)

    def delete_without_signals() -> None:  # as another server process or an operator's SQL would
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM authtoken_token")

    await db(delete_without_signals)
    assert await _closed_with(comm, 4401)
