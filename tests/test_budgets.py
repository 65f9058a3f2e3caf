"""Per-user budgets: turns a minute (REST and socket together), concurrent replies, open sockets."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from chat.models import Message
from sessions_app.services import session_create
from tests.ws import db, frames_until, next_frame, open_socket, send, token_for

pytestmark = pytest.mark.django_db(transaction=True)
THIRD = str(uuid.uuid4())


def budgets(settings, **values) -> None:  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "WS_FRAMES_PER_SECOND": 1000, **values}


def post(api, session, content: str, reply: bool = False):  # type: ignore[no-untyped-def]
    return api.post("/api/v1/messages/", {"session": str(session.pk), "content": content, "reply": reply}, format="json")


async def test_one_budget_of_turns_a_minute_for_rest_and_the_socket(user, api, settings):  # type: ignore[no-untyped-def]
    budgets(settings, TURNS_PER_MINUTE=3)
    session = await db(session_create, owner=user)
    assert [(await db(post, api, session, f"rest {i}")).status_code for i in range(2)] == [201, 201]
    comm = await open_socket(session.pk, token=await db(token_for, user))
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "third", "client_id": THIRD})
    created = (await frames_until(comm, "message.created"))[-1]
    assert created["message"]["client_id"] == THIRD
    await frames_until(comm, "message.completed", where=lambda f: f["message"]["role"] == "assistant")
    await send(comm, {"type": "user_message", "content": "fourth", "client_id": str(uuid.uuid4()), "request_id": "r4"})
    error = (await frames_until(comm, "error"))[-1]
    assert (error["code"], error["request_id"]) == ("rate_limited", "r4") and "a minute" in error["detail"]
    refused = await db(post, api, session, "fifth")
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    texts = await db(lambda: list(Message.objects.filter(session=session, role="user").values_list("content", flat=True)))
    assert sorted(texts) == ["rest 0", "rest 1", "third"]  # nothing of the refused turns was saved
    await comm.disconnect()


async def test_concurrent_replies_per_user_are_capped_and_other_users_go_on(user, other_user, settings):  # type: ignore[no-untyped-def]
    budgets(settings, MAX_REPLIES_PER_USER=4, DEMO_SLOW_DELAY=0.05)
    sessions = [await db(session_create, owner=user) for _ in range(30)]
    token = await db(token_for, user)
    sockets = [await open_socket(s.pk, token=token) for s in sessions]
    for comm in sockets:
        await next_frame(comm)
    # Thirty messages at once, each in its own session: only four replies may run.
    await asyncio.gather(*(send(comm, {"type": "user_message", "content": "/slow 60"}) for comm in sockets))
    outcomes = [await _first_outcome(comm) for comm in sockets]
    assert outcomes.count("streaming") == 4 and outcomes.count("rate_limited") == 26, outcomes
    assert await db(lambda: Message.objects.filter(status="streaming", session__owner=user).count()) == 4
    assert await db(lambda: Message.objects.filter(session__owner=user, role="user").count()) == 4
    # Another user is not held back by this one.
    theirs = await db(session_create, owner=other_user)
    other_token = await db(token_for, other_user)
    other = await open_socket(theirs.pk, token=other_token)
    await next_frame(other)
    await send(other, {"type": "user_message", "content": "hello"})
    assert await _first_outcome(other) == "streaming"
    # Once a reply ends, the user may start another.
    running = [comm for comm, outcome in zip(sockets, outcomes, strict=True) if outcome == "streaming"]
    await send(running[0], {"type": "cancel"})
    await frames_until(running[0], "message.completed", where=lambda f: f["message"]["role"] == "assistant")
    waiting = sockets[outcomes.index("rate_limited")]
    await send(waiting, {"type": "user_message", "content": "now"})
    assert await _first_outcome(waiting) == "streaming"
    for comm in [*sockets, other]:
        await comm.disconnect()


async def _first_outcome(comm) -> str:  # type: ignore[no-untyped-def]
    """'streaming' when the turn started (its reply was created), else the error's code."""
    while True:
        frame = await next_frame(comm)
        if frame["type"] == "error":
            return frame["code"]
        if frame["type"] == "message.created" and frame["message"]["role"] == "assistant":
            return frame["message"]["status"]


async def test_open_sockets_per_user_are_capped(user, settings):  # type: ignore[no-untyped-def]
    budgets(settings, WS_MAX_SOCKETS_PER_USER=3)
    session = await db(session_create, owner=user)
    token = await db(token_for, user)
    open_ = [await open_socket(session.pk, token=token) for _ in range(3)]
    for comm in open_:
        assert (await next_frame(comm))["type"] == "session.ready"
    extra = await open_socket(session.pk, token=token)
    frame = await next_frame(extra)
    assert (frame["type"], frame["code"]) == ("error", "rate_limited")
    assert (await extra.receive_output())["code"] == 4429
    await open_[0].disconnect()
    again = await open_socket(session.pk, token=token)
    assert (await next_frame(again))["type"] == "session.ready"
    for comm in [*open_[1:], again]:
        await comm.disconnect()
