"""`manage.py cleanup_sessions`: idle sessions go (with messages and reactions), running replies and recent work stay."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat.models import Approval, IdempotencyRecord, Message, Plan, Reaction, ToolCall
from chat.turn import turns
from sessions_app.models import ChatSession
from tests.ws import frames_until, next_frame, open_socket, token_for

pytestmark = pytest.mark.django_db


def make_session(owner: Any, title: str, *, idle_days: float = 0, messages: int = 1) -> ChatSession:
    session = ChatSession.objects.create(owner=owner, title=title)
    for n in range(messages):
        turns.turn_start(session_id=session.pk, user=owner, content=f"{title} message {n}", reply=False)
    if idle_days:
        ChatSession.objects.filter(pk=session.pk).update(updated_at=timezone.now() - timedelta(days=idle_days))
    return session


def add_streaming_reply(session: ChatSession) -> Message:
    session.refresh_from_db()
    seq = session.seq + 1
    ChatSession.objects.filter(pk=session.pk).update(seq=seq, message_count=F("message_count") + 1)
    return Message.objects.create(
        session=session, seq=seq, role=Message.Role.ASSISTANT, content="still writ", status=Message.Status.STREAMING
    )


def cleanup(*args: str) -> str:
    out = StringIO()
    call_command("cleanup_sessions", *args, stdout=out)
    return out.getvalue()


def test_deletes_idle_sessions_with_their_messages_and_reactions(user):
    idle = make_session(user, "idle", idle_days=40, messages=3)
    message = Message.objects.filter(session=idle).first()
    assert message is not None
    reaction = Reaction.objects.create(message=message, user=user, emoji="👍")
    recent = make_session(user, "recent", idle_days=2, messages=2)

    output = cleanup()

    assert not ChatSession.objects.filter(pk=idle.pk).exists()
    assert not Message.objects.filter(session_id=idle.pk).exists()
    assert not Reaction.objects.filter(pk=reaction.pk).exists()
    assert ChatSession.objects.filter(pk=recent.pk).exists()
    assert Message.objects.filter(session=recent).count() == 2
    assert "Deleted 1 sessions (3 messages)" in output


def test_days_option_and_default_ttl_from_settings(user, settings):
    settings.CHAT = {**settings.CHAT, "SESSION_TTL_DAYS": 10}
    week_old = make_session(user, "week old", idle_days=7)
    fortnight_old = make_session(user, "fortnight old", idle_days=14)

    cleanup()
    assert ChatSession.objects.filter(pk=week_old.pk).exists()
    assert not ChatSession.objects.filter(pk=fortnight_old.pk).exists()

    cleanup("--days", "5")
    assert not ChatSession.objects.filter(pk=week_old.pk).exists()


def test_keeps_an_idle_session_whose_reply_is_still_streaming(user):
    running = make_session(user, "running", idle_days=60)
    reply = add_streaming_reply(running)
    ChatSession.objects.filter(pk=running.pk).update(updated_at=timezone.now() - timedelta(days=60))

    output = cleanup()

    assert ChatSession.objects.filter(pk=running.pk).exists()
    assert Message.objects.get(pk=reply.pk).status == Message.Status.STREAMING
    assert "Deleted 0 sessions (0 messages)" in output
    assert "Kept 1 idle sessions with a reply, a tool call, a plan or an approval under way" in output


def _complete_reply(session: ChatSession) -> Message:
    reply = add_streaming_reply(session)
    Message.objects.filter(pk=reply.pk).update(status=Message.Status.COMPLETE, content="done")
    return reply


@pytest.mark.parametrize(
    "under_way",
    ["tool running", "tool awaiting the client", "approval pending", "plan pending", "plan between steps"],
)
def test_keeps_an_idle_session_with_a_tool_a_plan_or_an_approval_under_way(user, under_way):
    kept = make_session(user, "kept", idle_days=60)
    done = make_session(user, "done", idle_days=60)
    for session in (kept, done):
        reply = _complete_reply(session)
        call = ToolCall.objects.create(session=session, reply=reply, name="calculator", arguments={}, status=ToolCall.Status.DONE)
        Approval.objects.create(session=session, tool_call=call, status=Approval.Status.APPROVED)
        Plan.objects.create(session=session, reply=reply, steps=[{"instruction": "x"}], status=Plan.Status.DONE)
    reply = Message.objects.filter(session=kept, role=Message.Role.ASSISTANT).first()
    if under_way == "tool running":
        ToolCall.objects.create(session=kept, reply=reply, name="calculator", arguments={}, status=ToolCall.Status.RUNNING, ordinal=1)
    elif under_way == "tool awaiting the client":
        ToolCall.objects.create(session=kept, reply=reply, name="client_time", arguments={}, status=ToolCall.Status.AWAITING_CLIENT, ordinal=1)
    elif under_way == "approval pending":
        call = ToolCall.objects.create(session=kept, reply=reply, name="webhook_post", arguments={}, status=ToolCall.Status.AWAITING_APPROVAL, ordinal=1)
        Approval.objects.create(session=kept, tool_call=call, status=Approval.Status.PENDING)
    else:
        status = Plan.Status.PENDING if under_way == "plan pending" else Plan.Status.RUNNING
        Plan.objects.create(session=kept, reply=reply, steps=[{"instruction": "a"}, {"instruction": "b"}], status=status, current_step=1)
    ChatSession.objects.filter(pk__in=[kept.pk, done.pk]).update(updated_at=timezone.now() - timedelta(days=60))

    assert "Would keep 1 idle sessions" in cleanup("--dry-run")
    output = cleanup()

    assert ChatSession.objects.filter(pk=kept.pk).exists() and not ChatSession.objects.filter(pk=done.pk).exists()
    assert "Deleted 1 sessions" in output and "Kept 1 idle sessions" in output


def test_dry_run_lists_what_it_would_delete_and_deletes_nothing(user, other_user):
    old = make_session(user, "Old chat", idle_days=45, messages=2)
    older = make_session(other_user, "Older chat", idle_days=90, messages=1)
    recent = make_session(user, "Recent chat", idle_days=1)
    record = IdempotencyRecord.objects.create(user=user, key="k", request_hash="h")
    IdempotencyRecord.objects.filter(pk=record.pk).update(created_at=timezone.now() - timedelta(days=3))

    output = cleanup("--dry-run")

    assert ChatSession.objects.count() == 3 and Message.objects.count() == 4
    assert IdempotencyRecord.objects.filter(pk=record.pk).exists()
    assert "would delete 2 sessions (3 messages)" in output
    lines = output.splitlines()
    old_line = next(line for line in lines if str(old.pk) in line)
    assert "alice" in old_line and "Old chat" in old_line and "last activity" in old_line
    assert any(str(older.pk) in line and "bob" in line for line in lines)
    assert str(recent.pk) not in output
    assert "Would purge 1 expired idempotency records" in output


def test_small_batches_delete_everything_one_transaction_each(user):
    sessions = [make_session(user, f"idle {n}", idle_days=31, messages=2) for n in range(7)]
    keep = make_session(user, "keep", idle_days=3)

    with CaptureQueriesContext(connection) as ctx:
        output = cleanup("--batch-size", "2")

    assert not ChatSession.objects.filter(pk__in=[s.pk for s in sessions]).exists()
    assert ChatSession.objects.filter(pk=keep.pk).exists()
    assert Message.objects.count() == 1
    assert "Deleted 7 sessions (14 messages)" in output
    session_deletes = [
        q["sql"] for q in ctx.captured_queries
        if q["sql"].startswith('DELETE FROM "sessions_app_chatsession"')
    ]
    assert len(session_deletes) == 4  # 2 + 2 + 2 + 1


def test_purges_expired_idempotency_records(user):
    expired = IdempotencyRecord.objects.create(user=user, key="old", request_hash="h")
    IdempotencyRecord.objects.filter(pk=expired.pk).update(created_at=timezone.now() - timedelta(days=2))
    fresh = IdempotencyRecord.objects.create(user=user, key="new", request_hash="h")

    output = cleanup()

    assert not IdempotencyRecord.objects.filter(pk=expired.pk).exists()
    assert IdempotencyRecord.objects.filter(pk=fresh.pk).exists()
    assert "Purged 1 expired idempotency records" in output


@pytest.mark.django_db(transaction=True)
async def test_open_sockets_are_told_the_session_is_gone(user):  # type: ignore[no-untyped-def]
    idle = await database_sync_to_async(make_session)(user, "idle", idle_days=40)
    comm = await open_socket(idle.pk, token=await database_sync_to_async(token_for)(user))
    assert (await next_frame(comm))["type"] == "session.ready"

    await database_sync_to_async(cleanup)()

    # The session's own message.created may come first: make_session's turn hands its frames over without waiting.
    frames = await frames_until(comm, "session.deleted")
    assert frames[-1] == {"type": "session.deleted", "id": str(idle.pk)}
    assert {f["type"] for f in frames[:-1]} <= {"message.created"}
    assert (await comm.receive_output(timeout=5))["code"] == 4404
    await comm.disconnect()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--days", "-1"), "--days must be 0 or more"),
        (("--batch-size", "0"), "--batch-size must be 1 or more"),
        (("--batch-size", "-5"), "--batch-size must be 1 or more"),
    ],
)
def test_bad_arguments_are_a_clear_error(user, args, message):
    make_session(user, "idle", idle_days=40)

    with pytest.raises(CommandError, match=message):
        cleanup(*args)

    assert ChatSession.objects.count() == 1
