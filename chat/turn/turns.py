"""A user's turn: the user message and the assistant's placeholder, committed together.

`turn_start` is the hot path of every chat turn. Its transaction is a fixed handful of
statements, whatever the history: one statement locks the session row and, in the same
statement, reads whether a reply, a tool call or a plan is open and whether the `client_id`
was seen; then one multi-row INSERT, one UPDATE of the session row (seq, message count,
activity), and the commit. The model's context is read after the commit, in the same call,
so the engine starts the reply without another trip to the database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from chat import events, idempotency, routing
from chat.exceptions import AgentNotFound, Busy
from chat.models import Agent, Message
from chat.serializers import message_data
from chat.turn import agentic, liveness, outbox, rows
from chat.turn.context import context_for
from chat.turn.locking import LockedSession, session_step
from chat.validation import validate_client_id, validate_content
from sessions_app.models import ChatSession


def agent_get_active(*, slug: str) -> Agent:
    agent = Agent.objects.filter(slug=slug, is_active=True).first()
    if agent is None:
        raise AgentNotFound(f"No active agent '{slug}'.")
    return agent


def reply_agent_for(*, session: ChatSession, content: str) -> Agent | None:
    """Who answers: the session's agent in direct mode; in orchestrated mode the router decides. One query."""
    agents = rows.active_agents()
    own = next((a for a in agents if a.pk == session.agent_id), None) if session.agent_id else None
    if session.agent_id and own is None:
        own = Agent.objects.filter(pk=session.agent_id).first()  # deactivated since: it still answers its session
    if session.mode == ChatSession.Mode.DIRECT and own is not None:
        return own
    chosen = routing.route(content=content, agents=agents)
    if chosen is not None:
        return chosen
    return own or next((a for a in agents if not a.is_orchestrator), None)


@dataclass
class Turn:
    user_message: Message
    reply: Message | None
    created: bool
    # Every message of the turn, in seq order (what a repeated client_id gets again).
    messages: list[Message] = field(default_factory=list)


def _replay(session_id: uuid.UUID, message_id: uuid.UUID) -> Turn:
    existing = Message.objects.select_related("agent").get(pk=message_id)
    replies = list(Message.objects.filter(reply_to=existing).select_related("agent").order_by("seq"))
    return Turn(user_message=existing, reply=replies[0] if replies else None, created=False, messages=[existing, *replies])


def turn_start(
    *,
    session_id: uuid.UUID,
    user: AbstractBaseUser,
    content: str,
    client_id: str | None = None,
    reply: bool = True,
    metadata: dict[str, Any] | None = None,
) -> Turn:
    """Commit the user message and, with `reply`, a `streaming` assistant placeholder in one transaction.

    Locks the user's session row (another user's is not found). `message.created` frames go out
    and the reply starts only after commit (outbox). A repeated `client_id` returns the existing
    turn (created=False) and writes nothing. Raises Busy while a reply, a tool or a plan of the
    session is under way; what waits for the user (an approval, a client tool, a proposed plan)
    is superseded by the new message instead.
    """
    content = validate_content(content)
    client_id = validate_client_id(client_id)
    with session_step(session_id, owner_id=user.pk, turn_checks=True, client_id=client_id) as locked:
        checks = locked.checks
        assert checks is not None
        if checks.seen_client_id is not None:
            return _replay(locked.pk, checks.seen_client_id)
        if reply and checks.streaming:
            raise Busy("A reply is already running in this session; wait for it or cancel it.")
        if checks.open_calls or checks.open_plans:
            # Busy while a tool or plan runs (a message without a reply too: it would land between a
            # tool call and its result); what waits for the user is superseded by this message.
            agentic.turn_admit(locked=locked)
        turn = _insert_turn(locked, content=content, client_id=client_id, reply=reply, metadata=metadata)
    if turn.reply is not None:
        # Read after the commit (no lock held); the engine starts the reply with it, in order after the frames.
        first_turn = turn.user_message.seq == 1
        history = [(Message.Role.USER, Message.Type.TEXT, content, {})] if first_turn else None
        outbox.after_commit(outbox.StartReply(turn.reply.pk, context_for(turn.reply, prompt=content, history=history)))
    return turn


def _insert_turn(locked: LockedSession, *, content: str, client_id: str | None, reply: bool, metadata: dict[str, Any] | None) -> Turn:
    session = locked.session
    agent = reply_agent_for(session=session, content=content) if reply else None
    now = locked.touch(timezone.now())
    first = locked.allocate(2 if reply else 1)
    user_message = Message(
        session=session, seq=first, role=Message.Role.USER, type=Message.Type.TEXT, content=content,
        status=Message.Status.COMPLETE, client_id=client_id, metadata=metadata or {}, completed_at=now, created_at=now,
    )
    batch = [user_message]
    assistant = None
    if reply:
        assistant = Message(
            session=session, seq=first + 1, role=Message.Role.ASSISTANT, type=Message.Type.TEXT, content="",
            status=Message.Status.STREAMING, agent=agent, reply_to=user_message, worker_id=liveness.WORKER_ID, created_at=now,
        )
        batch.append(assistant)
    rows.messages_insert(batch)
    for message in batch:
        outbox.frame(session.pk, events.message_created(message_data(message)))
    return Turn(user_message=user_message, reply=assistant, created=True, messages=batch)


def message_send(*, user: AbstractBaseUser, session: ChatSession, content: str, reply: bool, claim: Any = None) -> dict[str, Any]:
    """The REST send: a turn, and with an `Idempotency-Key` claim (chat.idempotency) its stored answer.

    The message and the stored answer commit together: a retry either replays the answer or, when
    nothing committed, runs again; it never makes a second message. Returns the user Message shape.
    """
    record = getattr(claim, "record", None)
    committed: list[bool] = []
    try:
        with transaction.atomic():
            # Registered first, so it runs before the turn's effects leave after the commit.
            transaction.on_commit(lambda: committed.append(True))
            if record is not None:
                idempotency.idempotency_hold(record=record)
            turn = turn_start(session_id=session.pk, user=user, content=content, reply=reply)
            body = message_data(turn.user_message, user.pk)
            if record is not None:
                idempotency.idempotency_complete(record=record, status=201, body=body)
    except BaseException:
        if record is not None and not committed:
            idempotency.idempotency_release(record=record)
        raise
    return body
