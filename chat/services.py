"""Writes: turns, replies, reactions. Plain sync functions; the socket calls them with database_sync_to_async.

Locking rule: whatever allocates `seq` locks the session row (`select_for_update`) inside
`transaction.atomic()` and bumps `ChatSession.seq`; the unique (session, seq) constraint backs it.
"""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from chat import events, workers
from chat.exceptions import AgentNotFound, Busy, InvalidInput, NotFound
from chat.models import Agent, Message, Reaction
from chat.serializers import message_data, summarize_reactions
from sessions_app.models import ChatSession

# Validation -------------------------------------------------------------------


def validate_text(value: str, name: str) -> str:
    """Text every database stores: no NUL characters, no lone surrogates."""
    if "\x00" in value or (name == "output" and "\\u0000" in value):
        raise InvalidInput(f"{name} may not contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{name} is not valid Unicode text.") from None
    return value


def storable_text(text: str) -> str:
    """Model output as every database stores it: NUL characters dropped, lone surrogates made U+FFFD.

    User input with these is refused (`validate_text`); model output is kept, cleaned, since
    PostgreSQL would refuse the whole reply for one bad character.
    """
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def storable_json(value: Any) -> Any:
    """A JSON value from a model (tool arguments) with every string, keys too, cleaned like `storable_text`."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): storable_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable_json(v) for v in value]
    return value


def validate_content(content: object) -> str:
    if not isinstance(content, str):
        raise InvalidInput("content must be a string.")
    if not content.strip():
        raise InvalidInput("content may not be blank.")
    limit = settings.CHAT["MAX_MESSAGE_CHARS"]
    if len(content) > limit:
        raise InvalidInput(f"content is too long: {len(content)} characters, at most {limit}.")
    return validate_text(content, "content")


def validate_emoji(emoji: object) -> str:
    """One emoji: a pictograph with optional modifiers and variation selectors, several joined by
    ZWJ (👩‍💻), a flag (two regional indicators) or a keycap (1️⃣). Nothing else."""
    if not isinstance(emoji, str) or not emoji or len(emoji) > 16:
        raise InvalidInput("emoji must be a single emoji.")
    for part in emoji.split("\u200d"):
        pictographs = 0
        for ch in part:
            category = unicodedata.category(ch)
            if category == "So":
                pictographs += 1
            elif ch in ("\ufe0f", "\ufe0e", "\u20e3") or category in ("Sk", "Mn", "Me"):
                continue
            elif ch in "#*0123456789" and part.endswith("\u20e3") and part.index(ch) == 0:
                pictographs += 1
            else:
                raise InvalidInput("emoji must be a single emoji.")
        flag = pictographs == 2 and all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in part if unicodedata.category(c) == "So")
        if pictographs != 1 and not flag:
            raise InvalidInput("emoji must be a single emoji.")
    return emoji


def validate_client_id(client_id: object) -> str | None:
    if client_id is None:
        return None
    try:
        return str(uuid.UUID(str(client_id)))
    except (TypeError, ValueError, AttributeError):
        raise InvalidInput("client_id must be a UUID.") from None


# Agents -----------------------------------------------------------------------


def agent_get_active(*, slug: str) -> Agent:
    agent = Agent.objects.filter(slug=slug, is_active=True).first()
    if agent is None:
        raise AgentNotFound(f"No active agent '{slug}'.")
    return agent


def _default_agent() -> Agent | None:
    return Agent.objects.filter(is_active=True, is_orchestrator=False).order_by("pk").first()


def reply_agent_for(*, session: ChatSession, content: str) -> Agent | None:
    """Who answers: the session's agent in direct mode; in orchestrated mode the router decides."""
    if session.mode == ChatSession.Mode.DIRECT and session.agent_id:
        return session.agent
    from chat import routing

    return routing.route(session=session, content=content) or session.agent or _default_agent()


# Turns ------------------------------------------------------------------------


@dataclass
class Turn:
    user_message: Message
    reply: Message | None
    created: bool
    # Every message of the turn, in seq order (what a repeated client_id gets again).
    messages: list[Message] = field(default_factory=list)


def session_lock(session_id: uuid.UUID) -> ChatSession:
    """Locks the session row; call inside transaction.atomic. NotFound when it was deleted meanwhile."""
    session = ChatSession.objects.select_for_update(of=("self",)).select_related("agent").filter(pk=session_id).first()
    if session is None:
        raise NotFound("Session not found.")
    return session


def allocate_seq(session: ChatSession, count: int = 1) -> int:
    """The first of `count` new seqs. The session row must be locked (see `session_lock`)."""
    first = session.seq + 1
    session.seq += count
    return first


def turn_start(
    *,
    session: ChatSession,
    user: AbstractBaseUser,
    content: str,
    client_id: str | None = None,
    reply: bool = True,
    metadata: dict[str, Any] | None = None,
) -> Turn:
    """Commit the user message and, with `reply`, a `streaming` assistant placeholder in one transaction.

    Locks the session row. `message.created` frames go out and the reply starts only after commit.
    A repeated `client_id` returns the existing turn (created=False) and writes nothing.
    Raises Busy when a reply is already streaming in the session.
    """
    content = validate_content(content)
    client_id = validate_client_id(client_id)
    with transaction.atomic():
        locked = session_lock(session.pk)
        if client_id is not None:
            existing = Message.objects.filter(session=locked, client_id=client_id).select_related("agent").first()
            if existing is not None:
                replies = list(Message.objects.filter(reply_to=existing).select_related("agent").order_by("seq"))
                return Turn(user_message=existing, reply=replies[0] if replies else None, created=False, messages=[existing, *replies])
        from chat import agentic

        if reply and Message.objects.filter(session=locked, status=Message.Status.STREAMING).exists():
            raise Busy("A reply is already running in this session; wait for it or cancel it.")
        # Busy while a tool or plan runs (a message without a reply too: it would land between a
        # tool call and its result); what waits for the user is superseded by this message.
        if agentic.turn_admit(session=locked):
            locked.refresh_from_db(fields=["seq"])
        agent = reply_agent_for(session=locked, content=content) if reply else None
        now = timezone.now()
        first = allocate_seq(locked, 2 if reply else 1)
        user_message = Message(
            session=locked, seq=first, role=Message.Role.USER, type=Message.Type.TEXT, content=content,
            status=Message.Status.COMPLETE, client_id=client_id, metadata=metadata or {}, completed_at=now,
        )
        batch = [user_message]
        assistant = None
        if reply:
            assistant = Message(
                session=locked, seq=first + 1, role=Message.Role.ASSISTANT, type=Message.Type.TEXT, content="",
                status=Message.Status.STREAMING, agent=agent, reply_to=user_message, worker_id=workers.WORKER_ID,
            )
            batch.append(assistant)
        Message.objects.bulk_create(batch)
        locked.updated_at = now
        locked.save(update_fields=["seq", "updated_at"])
        for message in batch:
            events.broadcast_on_commit(locked.pk, events.message_created(message_data(message)))
        if assistant is not None:
            from chat import streaming

            reply_id = assistant.pk
            transaction.on_commit(lambda: streaming.start_reply_sync(reply_id))
    session.seq, session.updated_at = locked.seq, locked.updated_at
    return Turn(user_message=user_message, reply=assistant, created=True, messages=batch)


def message_send(
    *, user: AbstractBaseUser, session: ChatSession, content: str, reply: bool, claim: Any = None
) -> dict[str, Any]:
    """The REST send: a turn, and with an `Idempotency-Key` claim (chat.idempotency) its stored answer.

    The message and the stored answer commit together: a retry either replays the answer or, when
    nothing committed, runs again; it never makes a second message. Returns the user Message shape.
    """
    from chat import idempotency

    record = getattr(claim, "record", None)
    committed: list[bool] = []
    try:
        with transaction.atomic():
            # Registered first, so it runs before any broadcast that might raise after the commit.
            transaction.on_commit(lambda: committed.append(True))
            if record is not None:
                idempotency.idempotency_hold(record=record)
            turn = turn_start(session=session, user=user, content=content, reply=reply)
            body = message_data(turn.user_message, user.pk)
            if record is not None:
                idempotency.idempotency_complete(record=record, status=201, body=body)
    except BaseException:
        if record is not None and not committed:
            idempotency.idempotency_release(record=record)
        raise
    return body


def reply_checkpoint(*, message_id: uuid.UUID, content: str) -> bool:
    """Save the text so far of a streaming reply: one UPDATE, no lock held afterwards."""
    return bool(Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(content=content))


def reply_finish(
    *,
    message_id: uuid.UUID,
    content: str,
    status: str,
    error: str | None = None,
    metadata: dict[str, Any] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> Message | None:
    """Store the full text and final status of a reply, and the tool calls its model made, in one transaction.

    Broadcasts `message.completed` after commit.

    Returns None when the reply is no longer streaming (already ended elsewhere, or its session deleted).
    """
    now = timezone.now()
    with transaction.atomic():
        # The session first, as every step of a turn (see chat.agentic): its tool calls are recorded here.
        # (Not .exists(): Django drops `of` there and would lock the message row in the same statement.)
        if ChatSession.objects.select_for_update(of=("self",)).filter(messages__pk=message_id).values_list("pk", flat=True).first() is None:
            return None
        message = Message.objects.select_for_update(of=("self",)).select_related("agent", "session").filter(pk=message_id).first()
        if message is None:
            return None
        if message.status != Message.Status.STREAMING:
            # Marked interrupted while this process still generated it (a stalled heartbeat):
            # keep the fuller text; the status stays as every client was told.
            if message.status == Message.Status.INTERRUPTED and len(content) > len(message.content):
                message.content = content
                message.save(update_fields=["content"])
                events.broadcast_on_commit(message.session_id, events.message_completed(message_data(message, with_reactions=True)))
            return None
        message.content = content
        message.status = status
        message.error = error
        message.completed_at = now
        message.worker_id = ""
        if metadata:
            message.metadata = {**message.metadata, **metadata}
        message.save(update_fields=["content", "status", "error", "completed_at", "worker_id", "metadata"])
        ChatSession.objects.filter(pk=message.session_id).update(updated_at=now)
        if tool_calls:
            from chat import agentic

            agentic.tool_calls_record(reply=message, calls=tool_calls)
        data = message_data(message, with_reactions=True)
        events.broadcast_on_commit(message.session_id, events.message_completed(data))
    return message


def reply_fail_plainly(*, message_id: uuid.UUID, content: str, error: str) -> None:
    """Last resort when `reply_finish` keeps failing: one UPDATE, so the reply does not stay `streaming`."""
    Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(
        content=content, status=Message.Status.FAILED, error=error, completed_at=timezone.now(), worker_id=""
    )


def replies_mark_interrupted(*, session_id: uuid.UUID | None = None) -> list[Message]:
    from chat import streaming

    """Mark `interrupted` the streaming replies whose server process is dead; their text so far stays.

    A reply generated by a live process (this one or another) is never touched.
    """
    running = Message.objects.filter(status=Message.Status.STREAMING)
    if session_id is not None:
        running = running.filter(session_id=session_id)
    candidates = list(running.values_list("pk", "worker_id", "created_at"))
    if not candidates:
        return []
    dead = workers.dead_worker_ids({worker_id for _, worker_id, _ in candidates})
    marked: list[Message] = []
    now = timezone.now()
    for message_id, worker_id, created_at in candidates:
        if worker_id == workers.WORKER_ID:
            # Ours, but no task generates it (it died unexpectedly): end it too.
            if streaming.active_run(message_id) is not None or (now - created_at).total_seconds() < 15:
                continue
        elif worker_id not in dead:
            continue
        with transaction.atomic():
            message = Message.objects.select_for_update(of=("self",)).select_related("agent", "session").filter(pk=message_id).first()
            if message is None or message.status != Message.Status.STREAMING or message.worker_id != worker_id:
                continue
            if worker_id == workers.WORKER_ID and streaming.active_run(message_id) is not None:
                continue
            message.status = Message.Status.INTERRUPTED
            message.error = "The server stopped while this reply was being written."
            message.completed_at = now
            message.worker_id = ""
            message.save(update_fields=["status", "error", "completed_at", "worker_id"])
            events.broadcast_on_commit(message.session_id, events.message_completed(message_data(message, with_reactions=True)))
        marked.append(message)
    return marked


# Reactions --------------------------------------------------------------------


def _reaction_summary(message: Message, viewer_id: int | None) -> list[dict[str, Any]]:
    return summarize_reactions(Reaction.objects.filter(message=message), viewer_id)


def reaction_add(*, message: Message, user: AbstractBaseUser, emoji: str) -> tuple[bool, list[dict[str, Any]]]:
    """Add the user's reaction (once per emoji); broadcasts `reaction.updated`. Returns (created, summary)."""
    emoji = validate_emoji(emoji)
    limit = settings.CHAT["MAX_REACTIONS_PER_USER"]
    with transaction.atomic():
        session_lock(message.session_id)  # as every write in a session: a deletion cannot cross it
        mine = set(Reaction.objects.filter(message=message, user=user).values_list("emoji", flat=True))
        if emoji not in mine and len(mine) >= limit:
            raise InvalidInput(f"At most {limit} different reactions per message; remove one first.")
        _, created = Reaction.objects.get_or_create(message=message, user=user, emoji=emoji)
        summary = _reaction_summary(message, user.pk)
        if created:
            events.broadcast_on_commit(message.session_id, events.reaction_updated(message.pk, summary))
    return created, summary


def reaction_remove(*, message: Message, user: AbstractBaseUser, emoji: str) -> list[dict[str, Any]]:
    """Remove the user's reaction; raises NotFound when there is none. Broadcasts `reaction.updated`."""
    try:
        emoji = validate_emoji(emoji)
    except InvalidInput:
        raise NotFound("Reaction not found.") from None  # not an emoji, so never a reaction
    with transaction.atomic():
        session_lock(message.session_id)
        deleted, _ = Reaction.objects.filter(message=message, user=user, emoji=emoji).delete()
        if not deleted:
            raise NotFound("Reaction not found.")
        summary = _reaction_summary(message, user.pk)
        events.broadcast_on_commit(message.session_id, events.reaction_updated(message.pk, summary))
    return summary
