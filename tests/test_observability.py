"""What an operator watches: `/metrics` of a process in a fleet, and log lines that name the turn they are about."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.test import AsyncClient
from django.utils import timezone

from chat.engine import bus as engine_bus
from chat.models import Message, Worker
from chat.providers.demo import DemoProvider
from chat.ws.consumer import ChatConsumer
from chatproject import logs
from sessions_app.services import session_create
from tests.conftest import requires_redis
from tests.ws import db, frames_until, next_frame, open_socket, send

pytestmark = pytest.mark.django_db(transaction=True)


async def metric(name: str, labels: str = "") -> float:
    """The value of one series on /metrics (0 when it is not there yet)."""
    body = (await AsyncClient().get("/metrics")).content.decode()
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def metric_reaches(name: str, labels: str, value: float) -> float:
    """The series once it reached `value` (its process records it just after the frames that tell clients leave)."""
    for _ in range(200):
        now = await metric(name, labels)
        if now >= value:
            return now
        await asyncio.sleep(0.05)
    return await metric(name, labels)


def dead_process_reply(session, content: str) -> Message:  # type: ignore[no-untyped-def]
    """A streaming reply whose process stopped beating long ago (on another host: its pid says nothing here)."""
    Worker.objects.create(pk="elsewhere-1-dead", hostname="elsewhere", pid=1, heartbeat_at=timezone.now() - timedelta(hours=1))
    session.seq += 1
    session.save(update_fields=["seq"])
    return Message.objects.create(
        session=session, seq=session.seq, role="assistant", type="text", status="streaming", content=content, worker_id="elsewhere-1-dead",
    )


async def test_replies_found_interrupted_count_as_process_gone_and_reply_ends_as_final_saves(user, token):  # type: ignore[no-untyped-def]
    session = await db(session_create, owner=user)
    orphan = await db(dead_process_reply, session, "half a sentence")
    gone_before = await metric("chat_replies_interrupted_total", '{cause="process_gone"}')
    saves_before = await metric("chat_final_save_seconds_count")

    comm = await open_socket(session.pk, token=token)  # opening the session finds the orphan
    ready = await next_frame(comm)
    assert ready["active"] == []
    assert await db(lambda: Message.objects.get(pk=orphan.pk).status) == "interrupted"
    assert await metric("chat_replies_interrupted_total", '{cause="process_gone"}') == gone_before + 1

    await send(comm, {"type": "user_message", "content": "hello"})
    await frames_until(comm, "message.completed", where=lambda f: f["message"]["role"] == "assistant")
    assert await metric_reaches("chat_final_save_seconds_count", "", saves_before + 1) == saves_before + 1
    assert await metric("chat_replies_interrupted_total", '{cause="process_gone"}') == gone_before + 1
    assert await metric("chat_draining") == 0
    await comm.disconnect()


@requires_redis
async def test_the_way_through_redis_is_timed_by_a_probe(user, token, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(engine_bus, "PROBE_INTERVAL", 0.05)
    session = await db(session_create, owner=user)
    before = await metric("chat_bus_roundtrip_seconds_count")
    comm = await open_socket(session.pk, token=token)  # the engine (and its bus) starts on this loop
    await next_frame(comm)
    assert await metric_reaches("chat_bus_roundtrip_seconds_count", "", before + 1) > before
    await comm.disconnect()


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The server's log, as LOG_FORMAT=json writes it (chatproject.logs), caught in memory."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.IdsFilter())
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


def lines_of(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_json_log_lines_about_a_turn_name_its_session_and_message(user, token, json_log, monkeypatch):  # type: ignore[no-untyped-def]
    async def stream(self, ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("the model's client broke")
        yield  # an async generator

    monkeypatch.setattr(DemoProvider, "stream", stream)
    session = await db(session_create, owner=user)
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "hello"})
    completed = (await frames_until(comm, "message.completed", where=lambda f: f["message"]["role"] == "assistant"))[-1]["message"]
    assert completed["status"] == "failed"

    async def broken_ping(self, frame):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug in a frame handler")

    monkeypatch.setitem(ChatConsumer.handlers, "ping", broken_ping)
    await send(comm, {"type": "ping", "request_id": "p"})
    assert (await frames_until(comm, "error"))[-1]["code"] == "internal_error"
    await comm.disconnect()

    lines = lines_of(json_log)
    failed = [line for line in lines if line["message"] == f"Reply {completed['id']} failed"]
    assert len(failed) == 1, lines
    assert (failed[0]["session_id"], failed[0]["message_id"]) == (str(session.pk), completed["id"])
    assert failed[0]["level"] == "ERROR" and failed[0]["logger"] == "chat.engine.replies" and "the model's client broke" in failed[0]["exception"]
    assert failed[0]["time"].endswith("Z") and failed[0]["pid"] > 0
    frame = [line for line in lines if line["message"] == "Frame failed"]
    assert len(frame) == 1 and frame[0]["session_id"] == str(session.pk) and "a bug in a frame handler" in frame[0]["exception"]


def test_bound_ids_stay_in_their_context() -> None:
    def inside() -> dict[str, str]:
        logs.bind(session_id=uuid.UUID(int=1), message_id=None)
        logs.bind(message_id="m")
        return logs.current()

    assert contextvars.Context().run(inside) == {"session_id": str(uuid.UUID(int=1)), "message_id": "m"}
    assert logs.current() == {}
