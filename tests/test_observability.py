"""What an operator watches: `/metrics` of a process in a fleet."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import pytest
from django.test import AsyncClient
from django.utils import timezone

from chat.engine import bus as engine_bus
from chat.models import Message, Worker
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
