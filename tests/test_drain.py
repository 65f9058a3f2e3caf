"""A process that drains (SIGTERM under daphne; `engine.drain` here): work under way ends, nothing new starts.

The real signal, port and exit are in tests/test_processes.py; the fleet behind nginx in tests/test_fleet.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from chat.engine.process import engine
from chat.models import Message
from chatproject import metrics
from chatproject.asgi import application
from sessions_app.services import session_create
from tests.ws import db, frames_until, merge_text, next_frame, open_socket, send

pytestmark = pytest.mark.django_db(transaction=True)


def slow_text(n: int) -> str:
    return "".join(f"chunk {i} " for i in range(1, n + 1))


@pytest.fixture(autouse=True)
def _undrained() -> Iterator[None]:
    """A drained process exits; here the engine stays for the next tests, which must find it taking turns."""
    yield
    engine.draining = False
    metrics.DRAINING.set(0)


@pytest.fixture
def slow_demo(settings):  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "DEMO_SLOW_DELAY": 0.03}


async def test_a_drain_lets_the_running_reply_finish_refuses_new_turns_and_sockets_then_closes_with_4503(user, token, api, slow_demo):  # type: ignore[no-untyped-def]
    session = await db(session_create, owner=user)
    other = await db(session_create, owner=user)
    comm = await open_socket(session.pk, token=token)
    watcher = await open_socket(other.pk, token=token)  # a socket with nothing running: closed at the end too
    await next_frame(comm)
    await next_frame(watcher)
    await send(comm, {"type": "user_message", "content": "/slow 40"})
    frames = await frames_until(comm, "message.delta")
    reply_id = frames[-1]["message_id"]

    drain = asyncio.create_task(engine.drain(grace=60))
    await asyncio.sleep(0)
    await send(comm, {"type": "user_message", "content": "one more", "client_id": str(uuid.uuid4()), "request_id": "r1"})
    frames += await frames_until(comm, "error", where=lambda f: f.get("request_id") == "r1")
    assert frames[-1]["code"] == "unavailable"

    health = await AsyncClient().get("/healthz")
    assert (health.status_code, health.json()) == (503, {"status": "draining"})
    posted = await db(api.post, "/api/v1/messages/", {"session": str(other.pk), "content": "hi"}, format="json")
    assert posted.status_code == 503 and posted.json()["code"] == "unavailable" and posted["Retry-After"] == "1"

    late = WebsocketCommunicator(application, f"/ws/sessions/{other.pk}/", headers=[(b"authorization", f"Token {token}".encode())])
    connected, _ = await late.connect(timeout=10)
    assert connected
    assert await late.receive_output(timeout=10) == {"type": "websocket.close", "code": 4503}

    assert not drain.done()  # the reply still streams: the drain waits for it
    frames += await frames_until(comm, "message.completed", where=lambda f: f["message"]["id"] == reply_id)
    assert frames[-1]["message"]["status"] == "complete"
    assert await comm.receive_output(timeout=10) == {"type": "websocket.close", "code": 4503}
    assert await watcher.receive_output(timeout=10) == {"type": "websocket.close", "code": 4503}
    await asyncio.wait_for(drain, 10)

    reply = await db(lambda: Message.objects.get(pk=reply_id))
    assert (reply.status, reply.content) == ("complete", slow_text(40))
    assert merge_text("", frames, reply_id) == reply.content
    assert await db(lambda: list(Message.objects.order_by("created_at").values_list("content", flat=True))) == ["/slow 40", slow_text(40)]


async def test_a_drain_waits_for_a_plan_to_run_its_steps(user, token, settings):  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "DEMO_DELTA_DELAY": 0.02}  # each step streams for a while
    session = await db(session_create, owner=user)
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/plan first thing; second thing; third thing"})
    proposed = (await frames_until(comm, "plan.proposed"))[-1]
    await send(comm, {"type": "plan_decision", "plan_id": proposed["plan_id"], "decision": "approve"})
    await frames_until(comm, "message.created", where=lambda f: f["message"]["role"] == "assistant")  # the first step runs

    await engine.drain(grace=60)

    replies = await db(lambda: list(Message.objects.filter(session=session, role="assistant", type="text").values_list("status", flat=True)))
    assert replies and set(replies) == {"complete"}, replies
    assert not await db(lambda: Message.objects.filter(session=session, status="streaming").exists())
    assert (await frames_until(comm, "message.completed", where=lambda f: f["message"]["type"] == "plan"))[-1]["message"]["metadata"]["status"] == "done"


async def test_a_draining_process_leaves_queued_messages_to_the_processes_that_stay_and_refuses_a_regenerate(user, token, slow_demo):  # type: ignore[no-untyped-def]
    from chat.models import QueuedMessage

    session = await db(session_create, owner=user, on_busy="enqueue")
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/slow 30"})
    reply_id = (await frames_until(comm, "message.delta"))[-1]["message_id"]
    await send(comm, {"type": "user_message", "content": "answer me later"})
    await frames_until(comm, "queue.updated")

    drain = asyncio.create_task(engine.drain(grace=60))
    await asyncio.sleep(0)
    await send(comm, {"type": "regenerate", "message_id": reply_id, "request_id": "again"})
    assert (await frames_until(comm, "error", where=lambda f: f.get("request_id") == "again"))[-1]["code"] == "unavailable"
    await asyncio.wait_for(drain, 30)

    # The reply under way finished here; the queued message was not started on a process on its way out.
    assert (await db(Message.objects.get, pk=reply_id)).status == "complete"
    assert await db(QueuedMessage.objects.filter(session=session).count) == 1
    assert not await db(Message.objects.filter(session=session, content="answer me later").exists)
    # A process that stays (here: this engine, taking turns again) answers it on its sweep.
    engine.draining = False
    for _ in range(100):
        await engine.sweep()  # as each heartbeat's sweep does
        if await db(Message.objects.filter(session=session, role="assistant", status="complete").count) == 2:
            break
        await asyncio.sleep(0.1)
    messages = await db(lambda: list(Message.objects.filter(session=session).order_by("seq").values_list("role", "content")))
    assert [m for m in messages if m[0] == "user"] == [("user", "/slow 30"), ("user", "answer me later")]
    assert await db(QueuedMessage.objects.filter(session=session).exists) is False
