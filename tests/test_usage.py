"""Token usage: totals per session and per user per day, kept by each reply's end; the daily token budget."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from chat.models import Message, TokenBudget, UsageDay
from sessions_app.models import ChatSession
from sessions_app.services import session_create
from tests.ws import db, frames_until, next_frame, open_socket, send, token_for

pytestmark = pytest.mark.django_db(transaction=True)
USAGE = "/api/v1/usage/"


def no_limits(settings, **values) -> None:  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "WS_FRAMES_PER_SECOND": 1000, "TURNS_PER_MINUTE": 0, "MAX_REPLIES_PER_USER": 0, **values}


def reported(session_id) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    """(prompt, completion, replies) as the session's replies' own metadata says."""
    replies = [m.metadata["usage"] for m in Message.objects.filter(session_id=session_id, role="assistant") if "usage" in m.metadata]
    return sum(u["prompt_tokens"] for u in replies), sum(u["completion_tokens"] for u in replies), len(replies)


async def _turn(comm, content: str) -> dict:  # type: ignore[no-untyped-def]
    await send(comm, {"type": "user_message", "content": content, "client_id": str(uuid.uuid4())})
    return (await frames_until(comm, "message.completed", where=lambda f: f["message"]["role"] == "assistant"))[-1]


async def test_a_sessions_usage_adds_up_its_replies_everywhere_it_is_shown(user, api, settings):  # type: ignore[no-untyped-def]
    no_limits(settings)
    session = await db(session_create, owner=user)
    comm = await open_socket(session.pk, token=await db(token_for, user))
    assert (await next_frame(comm))["session"]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    seen = []
    for words in ("one", "one two three", "one two three four five"):
        completed = await _turn(comm, words)
        seen.append(completed["session_usage"])
    await comm.disconnect()
    prompt, completion, replies = await db(reported, session.pk)
    assert replies == 3 and prompt > 0 and completion > 0
    # Each reply's frame carries the session's totals after it: growing, ending at the sum of all replies.
    assert [s["total_tokens"] for s in seen] == sorted({s["total_tokens"] for s in seen})
    total = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    assert seen[-1] == total
    assert (await db(api.get, f"/api/v1/sessions/{session.pk}/")).json()["usage"] == total
    listed = (await db(api.get, "/api/v1/sessions/")).json()["results"]
    assert [s["usage"] for s in listed] == [total]
    again = await open_socket(session.pk, token=await db(token_for, user))
    assert (await next_frame(again))["session"]["usage"] == total
    await again.disconnect()
    body = (await db(api.get, USAGE)).json()
    assert body["today"] == {"day": timezone.localdate().isoformat(), "replies": 3, **total}
    assert body["days"] == [body["today"]] and body["daily_budget"] is None and body["remaining_today"] is None


async def test_replies_that_end_together_are_all_counted(user, api, settings):  # type: ignore[no-untyped-def]
    no_limits(settings, DEMO_SLOW_DELAY=0.01)
    token = await db(token_for, user)
    sessions = [await db(session_create, owner=user) for _ in range(30)]
    sockets = [await open_socket(s.pk, token=token) for s in sessions]
    for comm in sockets:
        await next_frame(comm)
    # Thirty replies stream at once and end within the same moments: their ends are stored in groups.
    done = await asyncio.gather(*(_turn(comm, f"/slow 20 {'word ' * i}") for i, comm in enumerate(sockets)))
    for comm in sockets:
        await comm.disconnect()
    expected = [await db(reported, s.pk) for s in sessions]
    assert all(replies == 1 for _, _, replies in expected)
    for session, completed, (prompt, completion, _) in zip(sessions, done, expected, strict=True):
        assert completed["session_usage"] == {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        row = await db(ChatSession.objects.get, pk=session.pk)
        assert (row.prompt_tokens, row.completion_tokens) == (prompt, completion)
    today = (await db(api.get, USAGE)).json()["today"]
    assert today["replies"] == 30
    assert today["prompt_tokens"] == sum(p for p, _, _ in expected) and today["completion_tokens"] == sum(c for _, c, _ in expected)


async def test_a_spent_daily_budget_refuses_the_next_reply_and_saves_nothing(user, api, settings):  # type: ignore[no-untyped-def]
    no_limits(settings, DAILY_TOKEN_BUDGET=5)
    session = await db(session_create, owner=user)
    comm = await open_socket(session.pk, token=await db(token_for, user))
    await next_frame(comm)
    first = await _turn(comm, "a first message, below the budget when it starts")
    assert first["message"]["status"] == "complete" and first["session_usage"]["total_tokens"] > 5
    count = (await db(ChatSession.objects.get, pk=session.pk)).message_count
    await send(comm, {"type": "user_message", "content": "again", "client_id": str(uuid.uuid4()), "request_id": 7})
    error = (await frames_until(comm, "error"))[-1]
    assert (error["code"], error["request_id"]) == ("rate_limited", 7) and "daily budget of 5 tokens" in error["detail"]
    refused = await db(api.post, "/api/v1/messages/", {"session": str(session.pk), "content": "over REST"}, format="json")
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert (await db(ChatSession.objects.get, pk=session.pk)).message_count == count
    # A message that asks for no reply uses no tokens: still taken.
    quiet = await db(api.post, "/api/v1/messages/", {"session": str(session.pk), "content": "a note", "reply": False}, format="json")
    assert quiet.status_code == 201
    await comm.disconnect()
    body = (await db(api.get, USAGE)).json()
    assert body["daily_budget"] == 5 and body["remaining_today"] == 0


async def test_a_users_own_budget_replaces_the_setting(user, other_user, api, settings):  # type: ignore[no-untyped-def]
    no_limits(settings, DAILY_TOKEN_BUDGET=1)
    await db(TokenBudget.objects.create, user=user, daily_tokens=0)  # no limit for this user
    await db(TokenBudget.objects.create, user=other_user, daily_tokens=10**6)
    for who in (user, other_user):
        session = await db(session_create, owner=who)
        comm = await open_socket(session.pk, token=await db(token_for, who))
        await next_frame(comm)
        for _ in range(2):
            assert (await _turn(comm, "hello there"))["message"]["status"] == "complete"
        await comm.disconnect()
    assert (await db(api.get, USAGE)).json()["daily_budget"] is None


async def test_a_stopped_reply_counts_its_text_and_is_not_free(user, api, settings):  # type: ignore[no-untyped-def]
    no_limits(settings, DEMO_SLOW_DELAY=0.05)
    session = await db(session_create, owner=user)
    comm = await open_socket(session.pk, token=await db(token_for, user))
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/slow 200", "client_id": str(uuid.uuid4())})
    await frames_until(comm, "message.delta", where=lambda f: f["offset"] > 30)
    await send(comm, {"type": "cancel"})
    stopped = (await frames_until(comm, "message.completed", where=lambda f: f["message"]["role"] == "assistant"))[-1]
    await comm.disconnect()
    text = stopped["message"]["content"]
    # The demo provider reports usage only at the end it never reached: the text is counted, about 4 characters a token.
    assert stopped["message"]["status"] == "cancelled" and "usage" not in stopped["message"]["metadata"]
    assert stopped["session_usage"] == {"prompt_tokens": 0, "completion_tokens": -(-len(text) // 4), "total_tokens": -(-len(text) // 4)}
    assert (await db(api.get, USAGE)).json()["today"]["replies"] == 1


def test_usage_is_the_users_own(user, other_user, api, other_api):  # type: ignore[no-untyped-def]
    UsageDay.objects.create(user=other_user, day=timezone.localdate(), prompt_tokens=7, completion_tokens=9, replies=1)
    UsageDay.objects.create(user=user, day=timezone.localdate() - timedelta(days=3), prompt_tokens=1, completion_tokens=2, replies=1)
    mine = api.get(USAGE).json()
    assert [d["total_tokens"] for d in mine["days"]] == [3] and mine["today"]["total_tokens"] == 0
    assert api.get(USAGE, {"days": 3}).json()["days"] == []  # three days back is outside the last three days
    assert [d["total_tokens"] for d in other_api.get(USAGE).json()["days"]] == [16]


@pytest.mark.parametrize("query", ["days=0", "days=367", "days=abc", "days=-1", "days=1&days=2", "days=", "days=%D9%A3"])
def test_usage_days_must_be_a_sensible_number(api, query):  # type: ignore[no-untyped-def]
    response = api.get(f"{USAGE}?{query}")
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error" and "days" in response.json()["fields"]


def test_usage_needs_credentials(client):  # type: ignore[no-untyped-def]
    assert client.get(USAGE).status_code in (401, 403)


def test_rebuild_recomputes_totals_from_the_replies_and_ignores_nonsense(user, other_user):  # type: ignore[no-untyped-def]
    mine, theirs = session_create(owner=user), session_create(owner=other_user)
    yesterday = timezone.now() - timedelta(days=1)
    rows = [
        (mine, {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}, timezone.now()),
        (mine, {"usage": {"prompt_tokens": 10, "completion_tokens": 20}}, yesterday),
        (mine, {"usage": {"prompt_tokens": "many", "completion_tokens": -5}}, timezone.now()),  # a provider's nonsense counts 0
        (mine, {}, timezone.now()),
        (theirs, {"usage": {"prompt_tokens": 1, "completion_tokens": 1}}, timezone.now()),
    ]
    for seq, (session, metadata, when) in enumerate(rows, 1):
        Message.objects.create(session=session, seq=seq, role="assistant", content="x", metadata=metadata, completed_at=when)
    ChatSession.objects.filter(pk=mine.pk).update(prompt_tokens=999)
    call_command("usage_rebuild", stdout=open("/dev/null", "w"))  # noqa: SIM115
    # The reply without usage counts its text ("x": one token, estimated).
    assert ChatSession.objects.filter(pk=mine.pk).values_list("prompt_tokens", "completion_tokens").get() == (13, 25)
    days = {(d.user_id, d.day): (d.prompt_tokens, d.completion_tokens, d.replies) for d in UsageDay.objects.all()}
    assert days == {
        (user.pk, timezone.localdate()): (3, 5, 3),
        (user.pk, timezone.localdate(yesterday)): (10, 20, 1),
        (other_user.pk, timezone.localdate()): (1, 1, 1),
    }
