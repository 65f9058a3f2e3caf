"""Failure paths: bad input never a 500, replies never stuck `streaming`, turns never stranded."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db.models import F
from django.utils import timezone

from chat.engine.process import engine
from chat.models import Message, ToolCall
from chat.turn import agentic, replies, turns
from chatproject.asgi import application
from sessions_app.models import ChatSession
from sessions_app.services import session_create
from tests.ws import db, frames_until, next_frame, open_socket, send, token_for

DEEP = "[" * 50000 + "]" * 50000


@pytest.fixture
def session(user):  # type: ignore[no-untyped-def]
    return session_create(owner=user, title="Hardening")


@pytest.mark.django_db
def test_deeply_nested_json_body_is_400_not_500(api, session):  # type: ignore[no-untyped-def]
    body = f'{{"session": "{session.pk}", "content": {DEEP}}}'
    response = api.post("/api/v1/messages/", body, content_type="application/json")
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"
    assert not Message.objects.exists()


@pytest.mark.django_db
def test_oversized_body_is_413_not_500(api, session, settings):  # type: ignore[no-untyped-def]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"session": str(session.pk), "content": "x" * 5000})
    response = api.post("/api/v1/messages/", body, content_type="application/json")
    assert response.status_code == 413 and response.json()["code"] == "request_too_large"


@pytest.mark.django_db
@pytest.mark.parametrize("content", ["nul \\u0000 inside", "lone \\ud800 surrogate"])
def test_unstorable_text_is_400(api, session, content):  # type: ignore[no-untyped-def]
    body = f'{{"session": "{session.pk}", "content": "{content}", "reply": false}}'
    response = api.post("/api/v1/messages/", body, content_type="application/json")
    assert response.status_code == 400
    assert not Message.objects.exists()


pytestmark_tx = pytest.mark.django_db(transaction=True)


@pytestmark_tx
@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ('{"type": "user_message", "content": ' + DEEP + "}", "invalid_json"),
        ('{"type": "user_message", "content": "nul \\u0000"}', "validation_error"),
        ('{"type": "user_message", "content": "bad \\ud800"}', "validation_error"),
        ('{"type": "hitl_decision", "approval_id": "00000000-0000-0000-0000-000000000001", "decision": "approve", "comment": "\\u0000"}',
         "validation_error"),
    ],
    ids=["nested", "nul", "surrogate", "nul-comment"],
)
async def test_unstorable_frames_get_clear_errors(session, user, raw, code):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=await db(token_for, user))
    await next_frame(comm)
    await comm.send_to(text_data=raw)
    assert (await next_frame(comm))["code"] == code
    await send(comm, {"type": "ping"})
    assert (await next_frame(comm))["type"] == "pong"
    await comm.disconnect()


@pytestmark_tx
async def test_client_tool_result_with_nan_is_refused(session, user):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=await db(token_for, user))
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/tool client_time {}"})
    call = (await frames_until(comm, "tool.call"))[-1]
    await comm.send_to(text_data=f'{{"type": "tool_result", "tool_call_id": "{call["tool_call_id"]}", "output": NaN}}')
    assert (await frames_until(comm, "error"))[-1]["code"] == "validation_error"
    assert (await db(lambda: ToolCall.objects.get(pk=call["tool_call_id"]))).status == "awaiting_client"
    await comm.disconnect()


@pytestmark_tx
async def test_enormous_calculator_result_fails_the_call_and_the_turn_goes_on(session, user):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=await db(token_for, user))
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": '/tool calculator {"expression": "9**999*9**999*9**999*9**999*9**999"}'})
    await frames_until(comm, "message.completed")
    frames = await frames_until(comm, "message.completed", where=lambda f: f["message"]["type"] == "text")
    assert "too large" in frames[-1]["message"]["content"]
    assert (await db(lambda: ToolCall.objects.get(session=session))).status == "failed"
    await comm.disconnect()


@pytestmark_tx
async def test_cookie_socket_from_another_port_is_refused(session, user, client):  # type: ignore[no-untyped-def]
    await database_sync_to_async(client.force_login)(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    for origin, host in (
        (b"http://localhost:6666", b"localhost:8000"),  # another port of the same host: another app
        (b"http://evil.example", b"evil.example"),  # a host ALLOWED_HOSTS does not allow
        (b"null", b"localhost:8000"),
    ):
        comm = WebsocketCommunicator(application, f"/ws/sessions/{session.pk}/", headers=[(b"cookie", cookie), (b"origin", origin), (b"host", host)])
        assert (await comm.connect())[0]
        assert (await comm.receive_output())["code"] == 4401, origin
    for origin, host in ((b"http://localhost:8000", b"localhost:8000"), (b"https://127.0.0.1", b"127.0.0.1")):
        # The second: an https page behind a proxy that ends TLS; the socket reaches us as ws.
        same = WebsocketCommunicator(application, f"/ws/sessions/{session.pk}/", headers=[(b"cookie", cookie), (b"origin", origin), (b"host", host)])
        assert (await same.connect())[0]
        assert (await next_frame(same))["type"] == "session.ready", origin
        await same.disconnect()


def test_a_secure_socket_needs_an_https_origin() -> None:
    from chat.ws.auth import origin_allowed

    assert origin_allowed("https://localhost", "localhost", "wss")
    assert origin_allowed("https://localhost:443", "localhost", "wss")
    assert not origin_allowed("http://localhost", "localhost", "wss")
    assert not origin_allowed("https://localhost.evil.example", "localhost", "wss")


@pytestmark_tx
async def test_switch_agent_in_orchestrated_mode_makes_that_agent_answer(session, user):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=await db(token_for, user))
    await next_frame(comm)
    await send(comm, {"type": "switch_agent", "agent": "coder"})
    switched = (await frames_until(comm, "agent.switched"))[-1]["session"]
    assert (switched["agent"], switched["mode"]) == ("coder", "direct")
    await send(comm, {"type": "user_message", "content": "summarise and compare these reports"})
    assert (await frames_until(comm, "message.completed"))[-1]["message"]["agent"] == "coder"
    await comm.disconnect()


@pytestmark_tx
async def test_reaction_added_while_streaming_survives_completion(session, user, api):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=await db(token_for, user))
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/slow 20"})
    reply_id = (await frames_until(comm, "message.delta"))[-1]["message_id"]
    response = await database_sync_to_async(api.post)(f"/api/v1/messages/{reply_id}/reactions/", {"emoji": "👍"}, format="json")
    assert response.status_code == 201
    completed = (await frames_until(comm, "message.completed"))[-1]["message"]
    assert completed["reactions"] == [{"emoji": "👍", "count": 1, "me": True}]
    await comm.disconnect()


@pytestmark_tx
async def test_reply_is_saved_when_the_final_write_fails_once(session, user, monkeypatch):  # type: ignore[no-untyped-def]
    original = replies.reply_finish
    failures = {"left": 1}

    def flaky(**kwargs):  # type: ignore[no-untyped-def]
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("database is locked")
        return original(**kwargs)

    monkeypatch.setattr(replies, "reply_finish", flaky)
    comm = await open_socket(session.pk, token=await db(token_for, user))
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "hello"})
    final = (await frames_until(comm, "message.completed"))[-1]["message"]
    assert final["status"] == "complete" and final["content"].startswith("Assistant here")
    await comm.disconnect()


@pytestmark_tx
async def test_reply_never_stays_streaming_when_the_final_write_keeps_failing(session, user, monkeypatch):  # type: ignore[no-untyped-def]
    def broken(**kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("database is locked")

    monkeypatch.setattr(replies, "reply_finish", broken)
    monkeypatch.setattr(asyncio, "sleep", _fast_sleep)
    comm = await open_socket(session.pk, token=await db(token_for, user))
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "hello"})
    reply_id = (await frames_until(comm, "message.created", where=lambda f: f["message"]["role"] == "assistant"))[-1]["message"]["id"]
    for _ in range(200):
        reply = await db(lambda: Message.objects.get(pk=reply_id))
        if reply.status != "streaming":
            break
        await _real_sleep(0.02)
    assert reply.status == "failed" and reply.content.startswith("Assistant here")
    monkeypatch.undo()
    await send(comm, {"type": "user_message", "content": "not busy"})
    created = await frames_until(comm, "message.created")
    assert created[-1]["message"]["content"] == "not busy"
    await comm.disconnect()


_real_sleep = asyncio.sleep


async def _fast_sleep(delay: float, *args, **kwargs):  # type: ignore[no-untyped-def]
    await _real_sleep(min(delay, 0.001), *args, **kwargs)


@pytestmark_tx
def test_idempotent_send_whose_answer_cannot_be_stored_creates_nothing(api, session, monkeypatch):  # type: ignore[no-untyped-def]
    from chat import idempotency

    original = idempotency.idempotency_complete
    monkeypatch.setattr(idempotency, "idempotency_complete", lambda **kw: (_ for _ in ()).throw(RuntimeError("store failed")))
    body = {"session": str(session.pk), "content": "once", "reply": False}
    first = api.post("/api/v1/messages/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 500 and not Message.objects.exists()
    monkeypatch.setattr(idempotency, "idempotency_complete", original)
    retry = api.post("/api/v1/messages/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = api.post("/api/v1/messages/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert retry.status_code == again.status_code == 201 and retry.json()["id"] == again.json()["id"]
    assert Message.objects.count() == 1


def _stranded_call(session: ChatSession) -> ToolCall:
    turn = turns.turn_start(session_id=session.pk, user=session.owner, content="what is 6*7", reply=False)
    session.refresh_from_db()
    reply = Message.objects.create(
        session=session, seq=session.seq + 1, role="assistant", content="Calling calculator.", status="complete",
        reply_to=turn.user_message, agent_id=None,
    )
    ChatSession.objects.filter(pk=session.pk).update(seq=session.seq + 1, message_count=F("message_count") + 1)
    call = ToolCall.objects.create(session=session, reply=reply, name="calculator", arguments={"expression": "6*7"})
    ToolCall.objects.filter(pk=call.pk).update(created_at=timezone.now() - timezone.timedelta(minutes=5))
    return call


@pytestmark_tx
async def test_tool_call_stranded_by_a_dead_process_is_resumed(session, user):  # type: ignore[no-untyped-def]
    call = await db(_stranded_call, session)
    comm = await open_socket(session.pk, token=await db(token_for, user))
    await next_frame(comm)
    assert await db(agentic.stalled_replies) == [call.reply_id]
    await engine.sweep()
    frames = await frames_until(comm, "message.completed", where=lambda f: f["message"]["type"] == "text")
    assert '"result": 42' in frames[-1]["message"]["content"]
    assert (await db(lambda: ToolCall.objects.get(pk=call.pk))).status == "done"
    assert await db(agentic.stalled_replies) == []
    await comm.disconnect()


@pytestmark_tx
async def test_tool_call_running_in_a_dead_process_fails_and_the_turn_goes_on(session, user):  # type: ignore[no-untyped-def]
    call = await db(_stranded_call, session)
    await db(lambda: ToolCall.objects.filter(pk=call.pk).update(status="running", worker_id="gone-host-9-deadbeef", started_at=timezone.now()))
    comm = await open_socket(session.pk, token=await db(token_for, user))
    await next_frame(comm)
    assert await db(agentic.lost_calls) == [(call.pk, call.reply_id)]
    await engine.sweep()
    frames = await frames_until(comm, "message.completed", where=lambda f: f["message"]["type"] == "text")
    assert "server stopped while this tool ran" in frames[-1]["message"]["content"]
    stored = await db(lambda: ToolCall.objects.get(pk=call.pk))
    assert stored.status == "failed" and stored.is_error
    assert await db(agentic.lost_calls) == []
    await comm.disconnect()


@pytestmark_tx
async def test_deleting_a_session_stops_its_reply(session, user, api):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=await db(token_for, user))
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/slow 500"})
    reply_id = (await frames_until(comm, "message.delta"))[-1]["message_id"]
    import uuid

    assert uuid.UUID(reply_id) in engine.replies.running()
    assert (await database_sync_to_async(api.delete)(f"/api/v1/sessions/{session.pk}/")).status_code == 204
    frames = await frames_until(comm, "session.deleted")
    assert frames[-1]["id"] == str(session.pk)
    for _ in range(100):
        if uuid.UUID(reply_id) not in engine.replies.running():
            break
        await asyncio.sleep(0.02)
    assert uuid.UUID(reply_id) not in engine.replies.running()
    await comm.disconnect()


@pytestmark_tx
async def test_a_reply_outlives_a_database_outage_longer_than_the_old_retries(session, user, monkeypatch):  # type: ignore[no-untyped-def]
    """The final save fails for 6 s (longer than the ~4 s retried before): the text is kept and saved once the database is back."""
    import time

    from django.db import OperationalError

    original = replies.reply_finish
    outage: dict[str, float] = {}

    def away(**kwargs):  # type: ignore[no-untyped-def]
        outage.setdefault("since", time.monotonic())
        if time.monotonic() - outage["since"] < 6.0:
            raise OperationalError("server closed the connection unexpectedly")
        return original(**kwargs)

    monkeypatch.setattr(replies, "reply_finish", away)
    comm = await open_socket(session.pk, token=await db(token_for, user))
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/slow 30"})
    reply_id = (await frames_until(comm, "message.created", where=lambda f: f["message"]["role"] == "assistant"))[-1]["message"]["id"]
    while "since" not in outage:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    # Meanwhile the sweep (a socket opening the session runs it) leaves the reply alone: this process holds it.
    here = engine.replies.running()
    assert await db(lambda: replies.replies_mark_interrupted(running_here=here)) == []
    assert (await db(lambda: Message.objects.get(pk=reply_id))).status == "streaming"
    final = (await frames_until(comm, "message.completed", where=lambda f: f["message"]["id"] == reply_id, timeout=30))[-1]["message"]
    stored = await db(lambda: Message.objects.get(pk=reply_id))
    assert final["status"] == stored.status == "complete"
    assert stored.content == final["content"] == "".join(f"chunk {i} " for i in range(1, 31))
    await comm.disconnect()


@pytest.mark.django_db
def test_a_database_that_cannot_serve_a_request_is_503_unavailable_not_500(api, session, monkeypatch):  # type: ignore[no-untyped-def]
    from django.db import OperationalError

    from sessions_app import selectors

    def pool_timeout(**kwargs):  # type: ignore[no-untyped-def]
        raise OperationalError("couldn't get a connection after 30.00 sec")

    monkeypatch.setattr(selectors, "session_get", pool_timeout)
    response = api.get(f"/api/v1/sessions/{session.pk}/")
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert response.json()["code"] == "unavailable"
