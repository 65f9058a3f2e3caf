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

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.db.models import OuterRef
from django.utils import timezone

from chat import branches, events, idempotency, routing, selectors
from chat.branches import Tip
from chat.exceptions import AgentNotFound, Busy, ChatError, InvalidInput, NotFound
from chat.models import Agent, Branch, Message, QueuedMessage
from chat.serializers import message_data, queued_data
from chat.turn import agentic, budget, liveness, outbox, rows
from chat.turn.context import context_for
from chat.turn.locking import LockedSession, lock_for_turns, session_step
from chat.validation import validate_client_id, validate_content
from sessions_app.models import ChatSession

ON_BUSY = tuple(ChatSession.OnBusy.values)


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
    # A new line of the message tree when the turn forks (an edit): inserted with the messages.
    branch: Branch | None = None
    # The session's number of lines after the turn (chat.branches), for the reply's context.
    lines: int = 1


@dataclass
class Queued:
    """A user message put in the session's queue (`on_busy` enqueue or interrupt), or found there again (a repeated client_id)."""

    item: QueuedMessage
    created: bool
    # For a repeated client_id: the session's `queue.updated` frame, for the sender alone.
    replay: list[dict[str, Any]] = field(default_factory=list)


def replay_turn(session: ChatSession, message_id: uuid.UUID, viewer_id: int) -> Turn:
    existing = Message.objects.select_related("agent").get(pk=message_id)
    replies = list(Message.objects.filter(reply_to=existing).select_related("agent").order_by("seq"))
    messages = [existing, *replies]
    branches.attach_versions(messages, lines=session.lines)
    frames = [events.message_created(message_data(m, viewer_id, with_reactions=True)) for m in messages]
    return Turn(user_message=existing, reply=replies[0] if replies else None, created=False, messages=messages, replay=frames)


def _replay_queued(session_id: uuid.UUID, queued_id: uuid.UUID) -> Queued:
    item = QueuedMessage.objects.get(pk=queued_id)
    return Queued(item=item, created=False, replay=[events.queue_updated(session_id, selectors.queue_items(session_id=session_id))])


@dataclass
class TurnRequest:
    """A user message that is to start a turn (what `turn_start` and `turn_start_many` take)."""

    session_id: uuid.UUID
    user: AbstractBaseUser
    content: str
    client_id: str | None = None
    reply: bool = True
    metadata: dict[str, Any] | None = None
    # What to do while the session's turn runs (ChatSession.OnBusy); None: the session's own choice.
    on_busy: str | None = None
    # The user message this one is a new version of (an edit): the new message forks from its parent.
    edit_of: uuid.UUID | None = None


def validate_on_busy(value: Any) -> str | None:
    if value is None:
        return None
    if value not in ON_BUSY:
        raise InvalidInput('on_busy must be "reject", "enqueue" or "interrupt".', field="on_busy")
    return str(value)


def turn_start(
    *,
    session_id: uuid.UUID,
    user: AbstractBaseUser,
    content: str,
    client_id: str | None = None,
    reply: bool = True,
    metadata: dict[str, Any] | None = None,
    on_busy: str | None = None,
    edit_of: uuid.UUID | None = None,
) -> Turn | Queued:
    """Commit the user message and, with `reply`, a `streaming` assistant placeholder in one transaction.

    Locks the user's session row (another user's is not found). `message.created` frames go out
    and the reply starts only after commit (outbox). A repeated `client_id` returns the existing
    turn (created=False) and writes nothing. While a reply, a tool or a plan of the session runs,
    `on_busy` (or the session's) decides: `reject` raises Busy, `enqueue` queues the message,
    `interrupt` stops the turn and answers it next (`Queued` until the turn has stopped). What
    waits for the user (an approval, a client tool, a proposed plan) is superseded by the new
    message instead. `edit_of`: the message is a new version of that user message.
    """
    request = TurnRequest(
        session_id, user, validate_content(content), validate_client_id(client_id), reply, metadata, validate_on_busy(on_busy), edit_of,
    )
    (result,) = turn_start_many([request])
    if isinstance(result, Exception):
        raise result
    return result


def turn_start_many(requests: list[TurnRequest]) -> list[Turn | Queued | ChatError]:
    """Start several turns (of any users and sessions) in one transaction: what one process receives at once.

    The same rules as `turn_start`, for each request, with one statement for all the locks and
    busy checks, one for the agents, one INSERT for all the messages and one UPDATE run for each
    session, then one commit: the cost of a commit and of a round trip is shared (group commit).
    A request whose session has a tool call or a plan open, or that comes second for a session in
    the same call, is taken on its own afterwards, exactly as if it had come later. Contents and
    client ids must be validated by the caller.
    """
    results: list[Turn | Queued | ChatError | None] = [None] * len(requests)
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
                results[index] = replay_turn(row.session, checks.seen_client_id, request.user.pk)
            elif checks.seen_queued is not None:
                results[index] = _replay_queued(row.pk, checks.seen_queued)
            elif request.session_id in taken or checks.open_calls or checks.open_plans or row.session.queued or request.edit_of:
                later.append(index)
            elif request.reply and checks.streaming:
                if (request.on_busy or row.session.on_busy) == ChatSession.OnBusy.REJECT:
                    results[index] = Busy(RUNNING)
                else:
                    later.append(index)
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
            turn.lines = turn.user_message.session.lines
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


RUNNING = "A reply is already running in this session; wait for it, stop it, or send with on_busy enqueue or interrupt."
QUEUE_AHEAD = "Messages are waiting in this session's queue; queue this one too (on_busy enqueue) or send it with on_busy interrupt."


def _turn_start_alone(request: TurnRequest) -> Turn | Queued:
    """A turn that may have to wait or fork: a tool call or a plan open, a reply running, a queue, an edit.

    What runs decides with `on_busy` (see `turn_start`); what waits for the user is superseded.
    """
    with transaction.atomic():
        row = lock_for_turns([(request.session_id, request.user.pk, request.client_id)]).get(request.session_id)
        if row is None or row.checks is None:
            raise NotFound("Session not found.")
        checks = row.checks
        if checks.seen_client_id is not None:
            return replay_turn(row.session, checks.seen_client_id, request.user.pk)
        if checks.seen_queued is not None:
            return _replay_queued(row.pk, checks.seen_queued)
        fork = _edit_target(row, request.edit_of) if request.edit_of is not None else None
        # Open tool calls or plans: running (a message without a reply too: it would land between a
        # tool call and its result), or waiting for the user (then this message supersedes them).
        work = agentic.open_work(locked=row) if checks.open_calls or checks.open_plans else None
        # A reply streaming makes a turn wait, and an edit too, even without a reply: it moves the active
        # branch, and the running reply's tool calls and continuation belong on the branch it is on.
        running = ((request.reply or fork is not None) and checks.streaming) or (work is not None and work.running)
        if running or row.session.queued:
            policy = request.on_busy or row.session.on_busy
            if policy == ChatSession.OnBusy.REJECT:
                raise Busy((work.why if work is not None and work.running else RUNNING) if running else QUEUE_AHEAD)
            if request.reply and (spent := budget.tokens_spent(checks.owner_tokens_today, checks.owner_budget)):
                raise spent
            if policy == ChatSession.OnBusy.ENQUEUE:
                return _enqueue(row, request, first=False)
            if agentic.turn_interrupt(locked=row, work=work):
                return _enqueue(row, request, first=True)
            work = None  # nothing runs any more (what waited was superseded): answered now, ahead of the queue
        if request.reply and (full := budget.replies_full(checks.owner_streaming)):
            raise full
        if request.reply and (spent := budget.tokens_spent(checks.owner_tokens_today, checks.owner_budget)):
            raise spent
        if work is not None:
            agentic.supersede(locked=row, work=work)
        turn = _new_turn(row, request, rows.active_agents() if request.reply else None, fork=fork)
        write_turn(row, turn)
    _start_reply_after_commit(turn)
    return turn


@dataclass(frozen=True)
class _Fork:
    """Where an edited message goes: under the parent of the message it is a version of (None: a new first message)."""

    parent: Tip | None


def _edit_target(locked: LockedSession, edit_of: uuid.UUID) -> _Fork:
    """Check that `edit_of` is a user text message of the locked session: one query."""
    locked.relink()
    found = (
        Message.objects.filter(pk=edit_of, session_id=locked.pk)
        .values_list("role", "type", "parent_id", "parent__line", "parent__seq", "parent__depth").first()
    )
    if found is None:
        raise NotFound("Message not found.")
    role, kind, parent_id, line, seq, depth = found
    if role != Message.Role.USER or kind != Message.Type.TEXT:
        raise InvalidInput("edit_of must be one of the user's text messages of this session.", field="edit_of")
    return _Fork(Tip(parent_id, line, seq, depth) if parent_id is not None else None)


def write_turn(locked: LockedSession, turn: Turn) -> None:
    """Insert the turn's messages (and its new line), write the session row back, and send the turn's frames after commit."""
    rows.messages_insert(turn.messages)
    if turn.branch is not None:
        turn.branch.save(force_insert=True)
        outbox.frame(locked.pk, events.branch_switched(locked.pk, locked.session.leaf_id))
    locked.save()
    turn.lines = locked.session.lines
    for message in turn.messages:
        outbox.frame(message.session_id, events.message_created(message_data(message)))


def _start_reply_after_commit(turn: Turn) -> None:
    """The model's context, read after the commit (no lock held); the engine starts the reply with it, after the frames."""
    if turn.reply is None:
        return
    content = turn.user_message.content
    # Nothing before it: a session's first message, or a new version of it (an edit).
    first_turn = turn.user_message.parent_id is None and (turn.user_message.seq == 1 or turn.branch is not None)
    history = [(Message.Role.USER, Message.Type.TEXT, content, {})] if first_turn else None
    outbox.after_commit(outbox.StartReply(turn.reply.pk, context_for(turn.reply, prompt=content, history=history, lines=turn.lines)))


def _new_turn(locked: LockedSession, request: TurnRequest, agents: list[Agent] | None, fork: _Fork | None = None) -> Turn:
    """The messages of a turn, with their seqs allocated and their places in the tree taken on the locked row (written by the caller)."""
    session = locked.session
    agent = reply_agent_for(session=session, content=request.content, agents=agents) if request.reply else None
    now = locked.touch(timezone.now())
    first = locked.allocate(2 if request.reply else 1)
    user_message = new_message(
        session, seq=first, role=Message.Role.USER, content=request.content, status=Message.Status.COMPLETE,
        client_id=request.client_id, metadata=request.metadata or {}, created_at=now, completed_at=now,
    )
    branch = None
    if fork is None:
        locked.append(user_message)
    else:
        siblings = branches.sibling_ids(session.pk, fork.parent.id if fork.parent else None)
        user_message._versions = [*siblings, str(user_message.pk)]  # type: ignore[attr-defined]
        branch = locked.fork(user_message, fork.parent)
    messages = [user_message]
    assistant = None
    if request.reply:
        assistant = new_message(
            session, seq=first + 1, role=Message.Role.ASSISTANT, content="", status=Message.Status.STREAMING,
            agent=agent, reply_to=user_message, worker_id=liveness.WORKER_ID, created_at=now,
        )
        locked.append(assistant)
        messages.append(assistant)
    return Turn(user_message=user_message, reply=assistant, created=True, messages=messages, branch=branch, lines=session.lines)


# The queue: messages sent while a turn runs ------------------------------------------------------


def _enqueue(locked: LockedSession, request: TurnRequest, *, first: bool) -> Queued:
    """Put the message in the session's queue: last, or `first` (an interrupt). Answered when the turn is over."""
    session = locked.session
    limit = settings.CHAT["MAX_QUEUED_MESSAGES"]
    if session.queued >= limit:
        raise Busy(f"{session.queued} messages are queued in this session already (at most {limit}); wait for the replies.")
    ends = QueuedMessage.objects.filter(session_id=session.pk).order_by("position").values_list("position", flat=True)
    if not session.queued:
        position = 0
    elif first:
        position = (ends.first() or 0) - 1
    else:
        position = (ends.last() or 0) + 1
    item = QueuedMessage.objects.create(
        session_id=session.pk, position=position, content=request.content, client_id=request.client_id, reply=request.reply,
        edit_of_id=request.edit_of, interrupt=first,
    )
    session.queued += 1
    locked.mark("queued")
    locked.touch()
    locked.save()  # asks the queue's step to look after the commit: nothing is answered while the turn runs
    outbox.frame(session.pk, events.queue_updated(session.pk, selectors.queue_items(session_id=session.pk)))
    return Queued(item=item, created=True)


def queue_next(*, session_id: uuid.UUID) -> Turn | None:
    """Answer the first queued message of the session if its turn is over; None when there is nothing to do now.

    Over: no reply streaming, no tool call open, no plan pending or running. What waits for a
    person (an approval, a client tool, a proposed plan) holds the queue until it is decided.
    Any process may call this for any session (the engine after a turn's steps, the sweep after a
    crash): the session lock makes one of them take each message, once.
    """
    owner_id = ChatSession.objects.filter(pk=session_id, queued__gt=0).values_list("owner_id", flat=True).first()
    if owner_id is None:
        return None
    with transaction.atomic():
        row = lock_for_turns([(session_id, owner_id, None)]).get(session_id)
        if row is None or row.checks is None or not row.session.queued:
            return None
        row.quiet = True
        checks = row.checks
        if checks.streaming or checks.open_calls or checks.open_plans:
            return None
        item = QueuedMessage.objects.select_for_update().filter(session_id=session_id).order_by("position").first()
        if item is None:  # the count was off: nothing is queued
            row.session.queued = 0
            row.mark("queued")
            row.save()
            return None
        request = TurnRequest(session_id, row.session.owner, item.content, item.client_id, item.reply, edit_of=item.edit_of_id)
        fork = _edit_target(row, item.edit_of_id) if item.edit_of_id is not None else None
        item.delete()
        row.session.queued -= 1
        row.mark("queued")
        # Accepted when it was queued: today's budgets were checked then, and a turn accepted finishes.
        turn = _new_turn(row, request, rows.active_agents() if request.reply else None, fork=fork)
        # A message without a reply starts no turn whose end would take the next one: take it now.
        row.quiet = turn.reply is not None
        write_turn(row, turn)
        outbox.frame(session_id, events.queue_updated(session_id, selectors.queue_items(session_id=session_id)))
    _start_reply_after_commit(turn)
    return turn


def queue_cancel(*, user: AbstractBaseUser, session_id: uuid.UUID, queued_id: uuid.UUID) -> None:
    """Take a message out of the queue before it is answered; another user's or an answered one is not found."""
    with session_step(session_id, owner_id=user.pk) as locked:
        item = QueuedMessage.objects.select_for_update().filter(pk=queued_id, session_id=session_id).first()
        if item is None:
            raise NotFound("Queued message not found (it may have been answered already).")
        item.delete()
        locked.session.queued = max(0, locked.session.queued - 1)
        locked.mark("queued")
        outbox.frame(session_id, events.queue_updated(session_id, selectors.queue_items(session_id=session_id)))


def sessions_with_stalled_queues(*, older_than: float = 2.0, limit: int = 100) -> list[uuid.UUID]:
    """Sessions whose queue has waited a while with nothing under way: `queue_next` should have taken their next message
    (its process may have died). Sessions whose queue is held (a turn runs, something waits for a person) are left out,
    so however many of those there are, these are found."""
    since = timezone.now() - timezone.timedelta(seconds=older_than)
    held = selectors.turn_under_way(OuterRef("session_id"))
    found = QueuedMessage.objects.filter(created_at__lt=since).exclude(held).order_by("created_at").values_list("session_id", flat=True)
    return list(dict.fromkeys(found[: limit * 10]))[:limit]


_FIELDS = [f.attname for f in Message._meta.concrete_fields]


def new_message(
    session: ChatSession, *, seq: int, role: str, content: str, status: str, created_at: Any, client_id: str | None = None,
    metadata: dict[str, Any] | None = None, agent: Agent | None = None, reply_to: Message | None = None, worker_id: str = "",
    completed_at: Any = None,
) -> Message:
    """A new text message of the turn, made the cheap way (positional, as the ORM makes rows it read)."""
    values = {
        "id": uuid.uuid4(), "session_id": session.pk, "seq": seq, "role": role, "type": Message.Type.TEXT, "content": content,
        "status": status, "agent_id": agent.pk if agent is not None else None, "client_id": client_id,
        "reply_to_id": reply_to.pk if reply_to is not None else None, "parent_id": None, "line": 1, "depth": 0,
        "metadata": metadata if metadata is not None else {}, "error": None, "worker_id": worker_id, "created_at": created_at,
        "completed_at": completed_at,
    }
    message = Message(*[values[name] for name in _FIELDS])
    message._state.adding = True
    Message.session.field.set_cached_value(message, session)
    if agent is not None:
        Message.agent.field.set_cached_value(message, agent)
    if reply_to is not None:
        Message.reply_to.field.set_cached_value(message, reply_to)
    return message


def message_send(
    *, user: AbstractBaseUser, session: ChatSession, content: str, reply: bool, claim: Any = None, on_busy: str | None = None,
    edit_of: uuid.UUID | None = None,
) -> tuple[int, dict[str, Any]]:
    """The REST send: a turn, and with an `Idempotency-Key` claim (chat.idempotency) its stored answer.

    The message and the stored answer commit together: a retry either replays the answer or, when
    nothing committed, runs again; it never makes a second message. Returns (201, the user Message
    shape), or (202, `{"queued": QueuedMessage}`) when the message waits in the session's queue.
    """

    def send() -> tuple[int, dict[str, Any]]:
        turn = turn_start(session_id=session.pk, user=user, content=content, reply=reply, on_busy=on_busy, edit_of=edit_of)
        if isinstance(turn, Queued):
            return 202, {"queued": queued_data(turn.item)}
        return 201, message_data(turn.user_message, user.pk)

    return idempotency.run_once(claim=claim, work=send)
