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
from chat.exceptions import AgentNotFound, Busy, ChatError, NotFound
from chat.models import Agent, Message
from chat.serializers import message_data
from chat.turn import agentic, budget, liveness, outbox, rows
from chat.turn.context import context_for
from chat.turn.locking import LockedSession, lock_for_turns
from chat.validation import validate_client_id, validate_content
from sessions_app.models import ChatSession


def agent_get_active(*, slug: str) -> Agent:
    agent = Agent.objects.filter(slug=slug, is_active=True).first()
    if agent is None:
        raise AgentNotFound(f"No active agent '{slug}'.")
    return agent


def reply_agent_for(*, session: ChatSession, content: str, agents: list[Agent] | None = None) -> Agent | None:
    """Who answers: the session's agent in direct mode; in orchestrated mode the router decides among `agents` (the active ones)."""
    if agents is None:
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
    # For a repeated client_id: those messages' `message.created` frames, for the sender alone.
    replay: list[dict[str, Any]] = field(default_factory=list)


def _replay(session_id: uuid.UUID, message_id: uuid.UUID, viewer_id: int) -> Turn:
    existing = Message.objects.select_related("agent").get(pk=message_id)
    replies = list(Message.objects.filter(reply_to=existing).select_related("agent").order_by("seq"))
    messages = [existing, *replies]
    frames = [events.message_created(message_data(m, viewer_id, with_reactions=True)) for m in messages]
    return Turn(user_message=existing, reply=replies[0] if replies else None, created=False, messages=messages, replay=frames)


@dataclass
class TurnRequest:
    """A user message that is to start a turn (what `turn_start` and `turn_start_many` take)."""

    session_id: uuid.UUID
    user: AbstractBaseUser
    content: str
    client_id: str | None = None
    reply: bool = True
    metadata: dict[str, Any] | None = None


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
    request = TurnRequest(session_id, user, validate_content(content), validate_client_id(client_id), reply, metadata)
    (result,) = turn_start_many([request])
    if isinstance(result, Exception):
        raise result
    return result


def turn_start_many(requests: list[TurnRequest]) -> list[Turn | ChatError]:
    """Start several turns (of any users and sessions) in one transaction: what one process receives at once.

    The same rules as `turn_start`, for each request, with one statement for all the locks and
    busy checks, one for the agents, one INSERT for all the messages and one UPDATE run for each
    session, then one commit: the cost of a commit and of a round trip is shared (group commit).
    A request whose session has a tool call or a plan open, or that comes second for a session in
    the same call, is taken on its own afterwards, exactly as if it had come later. Contents and
    client ids must be validated by the caller.
    """
    results: list[Turn | ChatError | None] = [None] * len(requests)
    later: list[int] = []
    started: list[Turn] = []
    # Over the minute's budget: refused before anything is locked (a repeat of a client_id too; it is rare).
    asked = []
    for index, request in enumerate(requests):
        refused = budget.take_turn(request.user.pk)
        if refused is not None:
            results[index] = refused
        else:
            asked.append(index)
    if not asked:
        return results  # type: ignore[return-value]
    with transaction.atomic():
        locked = lock_for_turns([(requests[i].session_id, requests[i].user.pk, requests[i].client_id) for i in asked])
        agents: list[Agent] | None = None
        taken: set[uuid.UUID] = set()
        replying: dict[int, int] = {}  # replies started in this call, per user
        for index in asked:
            request = requests[index]
            row = locked.get(request.session_id)
            checks = row.checks if row is not None else None
            if row is None or checks is None:
                results[index] = NotFound("Session not found.")
            elif checks.seen_client_id is not None:
                results[index] = _replay(row.pk, checks.seen_client_id, request.user.pk)
            elif request.session_id in taken or checks.open_calls or checks.open_plans:
                later.append(index)
            elif request.reply and checks.streaming:
                results[index] = Busy("A reply is already running in this session; wait for it or cancel it.")
            elif request.reply and (full := budget.replies_full(checks.owner_streaming + replying.get(request.user.pk, 0))):
                results[index] = full
            elif request.reply and (spent := budget.tokens_spent(checks.owner_tokens_today, checks.owner_budget)):
                results[index] = spent
            else:
                if request.reply:
                    replying[request.user.pk] = replying.get(request.user.pk, 0) + 1
                if request.reply and agents is None:
                    agents = rows.active_agents()
                turn = _new_turn(row, request, agents)
                taken.add(request.session_id)
                results[index] = turn
                started.append(turn)
        rows.messages_insert([m for turn in started for m in turn.messages])
        rows.sessions_save_turns([turn.user_message.session for turn in started])
        for turn in started:
            for message in turn.messages:
                outbox.frame(message.session_id, events.message_created(message_data(message)))
    for turn in started:
        _start_reply_after_commit(turn)
    for index in later:
        try:
            results[index] = _turn_start_alone(requests[index])
        except ChatError as exc:
            results[index] = exc
    return results  # type: ignore[return-value]


def _turn_start_alone(request: TurnRequest) -> Turn:
    """A turn in a session where a tool call or a plan may be open: those are settled first (turn_admit)."""
    with transaction.atomic():
        row = lock_for_turns([(request.session_id, request.user.pk, request.client_id)]).get(request.session_id)
        if row is None or row.checks is None:
            raise NotFound("Session not found.")
        checks = row.checks
        if checks.seen_client_id is not None:
            return _replay(row.pk, checks.seen_client_id, request.user.pk)
        if request.reply and checks.streaming:
            raise Busy("A reply is already running in this session; wait for it or cancel it.")
        if request.reply and (full := budget.replies_full(checks.owner_streaming)):
            raise full
        if request.reply and (spent := budget.tokens_spent(checks.owner_tokens_today, checks.owner_budget)):
            raise spent
        if checks.open_calls or checks.open_plans:
            # Busy while a tool or plan runs (a message without a reply too: it would land between a
            # tool call and its result); what waits for the user is superseded by this message.
            agentic.turn_admit(locked=row)
        turn = _new_turn(row, request, rows.active_agents() if request.reply else None)
        rows.messages_insert(turn.messages)
        row.save()
        for message in turn.messages:
            outbox.frame(message.session_id, events.message_created(message_data(message)))
    _start_reply_after_commit(turn)
    return turn


def _start_reply_after_commit(turn: Turn) -> None:
    """The model's context, read after the commit (no lock held); the engine starts the reply with it, after the frames."""
    if turn.reply is None:
        return
    content = turn.user_message.content
    first_turn = turn.user_message.seq == 1
    history = [(Message.Role.USER, Message.Type.TEXT, content, {})] if first_turn else None
    outbox.after_commit(outbox.StartReply(turn.reply.pk, context_for(turn.reply, prompt=content, history=history)))


def _new_turn(locked: LockedSession, request: TurnRequest, agents: list[Agent] | None) -> Turn:
    """The messages of a turn, with their seqs allocated on the locked row (written by the caller)."""
    session = locked.session
    agent = reply_agent_for(session=session, content=request.content, agents=agents) if request.reply else None
    now = locked.touch(timezone.now())
    first = locked.allocate(2 if request.reply else 1)
    user_message = _message(
        session, seq=first, role=Message.Role.USER, content=request.content, status=Message.Status.COMPLETE,
        client_id=request.client_id, metadata=request.metadata or {}, created_at=now, completed_at=now,
    )
    messages = [user_message]
    assistant = None
    if request.reply:
        assistant = _message(
            session, seq=first + 1, role=Message.Role.ASSISTANT, content="", status=Message.Status.STREAMING,
            agent=agent, reply_to=user_message, worker_id=liveness.WORKER_ID, created_at=now,
        )
        messages.append(assistant)
    return Turn(user_message=user_message, reply=assistant, created=True, messages=messages)


_FIELDS = [f.attname for f in Message._meta.concrete_fields]


def _message(
    session: ChatSession, *, seq: int, role: str, content: str, status: str, created_at: Any, client_id: str | None = None,
    metadata: dict[str, Any] | None = None, agent: Agent | None = None, reply_to: Message | None = None, worker_id: str = "",
    completed_at: Any = None,
) -> Message:
    """A new text message of the turn, made the cheap way (positional, as the ORM makes rows it read)."""
    values = {
        "id": uuid.uuid4(), "session_id": session.pk, "seq": seq, "role": role, "type": Message.Type.TEXT, "content": content,
        "status": status, "agent_id": agent.pk if agent is not None else None, "client_id": client_id,
        "reply_to_id": reply_to.pk if reply_to is not None else None, "metadata": metadata if metadata is not None else {},
        "error": None, "worker_id": worker_id, "created_at": created_at, "completed_at": completed_at,
    }
    message = Message(*[values[name] for name in _FIELDS])
    message._state.adding = True
    Message.session.field.set_cached_value(message, session)
    if agent is not None:
        Message.agent.field.set_cached_value(message, agent)
    if reply_to is not None:
        Message.reply_to.field.set_cached_value(message, reply_to)
    return message


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
