"""The rows of a streaming reply: its checkpoints, its end, and replies whose process died.

Sync steps, each one short transaction; the engine calls them on its database threads.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from chat import branches, events, usage
from chat.exceptions import NotFound
from chat.models import Message, QueuedMessage
from chat.serializers import message_data
from chat.turn import agentic, liveness, outbox, rows
from chat.turn.locking import LockedSession, session_step

INTERRUPTED = "The server stopped while this reply was being written."


def replies_checkpoint(*, texts: Sequence[tuple[uuid.UUID, str]]) -> int:
    """Save the text so far of many streaming replies with one UPDATE (autocommit). Holds no lock afterwards.

    The process's checkpointer calls this once per CHECKPOINT_INTERVAL for its replies, in chunks,
    so the number of statements does not grow with the number of streams.
    """
    return rows.replies_checkpoint(texts)


@dataclass(frozen=True)
class Finished:
    """How a reply's end was stored; `advance` when its tool calls are to be taken on."""

    stored: bool
    advance: bool = False


def _ended(message: Message, content: str, status: str, error: str | None, when: Any, metadata: dict[str, Any]) -> Message:
    """The reply's row as `rows.reply_end` / `rows.replies_end` stored it, from the row as streaming began."""
    message.content, message.status, message.error, message.completed_at, message.worker_id, message.metadata = (
        content, status, error, when, "", metadata,
    )
    return message


def _account(ended: Sequence[tuple[uuid.UUID, int, dict[str, Any], str]], when: Any) -> dict[uuid.UUID, dict[str, int]]:
    """Activity and tokens of replies that just ended, (session, owner, metadata, text) each: one UPDATE of their
    sessions, and one upsert of their owners' day totals when any counts tokens (chat.usage). The sessions' totals, by id.
    """
    sessions: dict[uuid.UUID, tuple[int, int]] = {}
    days: dict[tuple[int, Any], tuple[int, int, int]] = {}
    day = usage.day_of(when)
    for session_id, owner_id, metadata, content in ended:
        tokens = usage.counted(metadata, content)
        prompt, completion = sessions.get(session_id, (0, 0))
        if tokens is None:
            sessions[session_id] = (prompt, completion)
            continue
        sessions[session_id] = (prompt + tokens[0], completion + tokens[1])
        p, c, n = days.get((owner_id, day), (0, 0, 0))
        days[(owner_id, day)] = (p + tokens[0], c + tokens[1], n + 1)
    totals = rows.sessions_finish(sessions, when)
    rows.usage_add(days)
    return {session_id: usage.as_data(*tokens) for session_id, tokens in totals.items()}


def reply_finish(
    *,
    message_id: uuid.UUID,
    session_id: uuid.UUID,
    content: str,
    status: str,
    error: str | None = None,
    metadata: dict[str, Any] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    placeholder: Message | None = None,
) -> Finished:
    """Store the full text and final status of a reply, and the tool calls its model made, in one transaction.

    Locks the session, then stores the end with one UPDATE that only a still streaming reply
    matches (`placeholder`, the row as the reply began, gives the rest of its frame). Sends
    `message.completed` after commit. Not stored when the reply is no longer streaming (ended
    elsewhere, or its session deleted).
    """
    try:
        with session_step(session_id) as locked:
            now = timezone.now()
            if tool_calls and status == Message.Status.COMPLETE and _interrupt_waits(locked):
                # The user interrupted the turn as its model finished: the calls it asked for do not run.
                status, tool_calls = Message.Status.CANCELLED, None
            if placeholder is not None:
                merged = {**placeholder.metadata, **metadata} if metadata else placeholder.metadata
                if rows.reply_end(message_id=message_id, content=content, status=status, error=error, completed_at=now, metadata=merged):
                    totals = _account([(session_id, locked.session.owner_id, merged, content)], now)
                    message = _ended(placeholder, content, status, error, now, merged)
                    if tool_calls:
                        agentic.tool_calls_record(reply=message, calls=tool_calls)
                    data = message_data(message, locked.session.owner_id, reactions=rows.reactions_of(message_id))
                    outbox.frame(session_id, events.message_completed(data, totals.get(session_id)))
                    return Finished(stored=True, advance=bool(tool_calls) and status == Message.Status.COMPLETE)
            message = Message.objects.select_for_update(of=("self",)).select_related("agent", "session").filter(pk=message_id).first()
            if message is None:
                return Finished(stored=False)
            if message.status != Message.Status.STREAMING:
                # Marked interrupted while this process still generated it (a stalled heartbeat):
                # keep the fuller text; the status stays as every client was told.
                if message.status == Message.Status.INTERRUPTED and len(content) > len(message.content):
                    message.content = content
                    message.save(update_fields=["content"])
                    outbox.frame(session_id, events.message_completed(message_data(message, with_reactions=True)))
                return Finished(stored=False)
            message.content, message.status, message.error = content, status, error
            message.completed_at, message.worker_id = now, ""
            if metadata:
                message.metadata = {**message.metadata, **metadata}
            message.save(update_fields=["content", "status", "error", "completed_at", "worker_id", "metadata"])
            branches.attach_versions([message], lines=message.session.lines)
            totals = _account([(session_id, locked.session.owner_id, message.metadata, content)], now)
            if tool_calls:
                agentic.tool_calls_record(reply=message, calls=tool_calls)
            outbox.frame(session_id, events.message_completed(message_data(message, with_reactions=True), totals.get(session_id)))
    except NotFound:
        return Finished(stored=False)  # the session was deleted meanwhile, its messages with it
    return Finished(stored=True, advance=bool(tool_calls) and status == Message.Status.COMPLETE)


def _interrupt_waits(locked: LockedSession) -> bool:
    """Whether a message sent with on_busy interrupt waits in the locked session's queue (chat.turn.turns)."""
    return bool(locked.session.queued) and QueuedMessage.objects.filter(session_id=locked.pk, interrupt=True).exists()


@dataclass(frozen=True)
class FinishRequest:
    """A reply's end, as the engine hands it to `reply_finish_many` (the arguments of `reply_finish`)."""

    message_id: uuid.UUID
    session_id: uuid.UUID
    content: str
    status: str
    error: str | None = None
    metadata: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    placeholder: Message | None = None

    def alone(self) -> Finished:
        return reply_finish(
            message_id=self.message_id, session_id=self.session_id, content=self.content, status=self.status, error=self.error,
            metadata=self.metadata, tool_calls=self.tool_calls, placeholder=self.placeholder,
        )


def reply_finish_many(requests: Sequence[FinishRequest]) -> list[Finished | Exception]:
    """Store the ends of several replies (of any sessions) in one transaction: what ends at once in one process.

    The same outcome as `reply_finish` for each, with one statement locking every session (in id
    order), one UPDATE storing every end, one SELECT of their reactions, one UPDATE of the
    sessions' activity and tokens, one upsert of the owners' day totals and one commit, however many replies end together (group commit). Replies
    with tool calls to record, without their starting row, or no longer streaming take
    `reply_finish` one by one, after the group. One alone takes `reply_finish` at once.
    """
    if len(requests) == 1:
        return [requests[0].alone()]
    results: list[Finished | Exception | None] = [None] * len(requests)
    grouped = [i for i, r in enumerate(requests) if r.placeholder is not None and not r.tool_calls]
    alone = [i for i, r in enumerate(requests) if r.placeholder is None or r.tool_calls]
    if grouped:
        with transaction.atomic():
            locked = rows.lock_sessions({requests[i].session_id for i in grouped})
            owners = {session_id: owner for session_id, (owner, _) in locked.items()}
            for session_id, (_, queued) in locked.items():
                if queued:  # messages wait in its queue: answered if this ended the turn (chat.turn.turns.queue_next)
                    outbox.after_commit(outbox.QueueNext(session_id))
            for i in grouped:
                if requests[i].session_id not in owners:
                    results[i] = Finished(stored=False)  # the session was deleted meanwhile, its messages with it
            now = timezone.now()
            live = [i for i in grouped if results[i] is None]
            ends, merged = [], {}
            for i in live:
                r = requests[i]
                assert r.placeholder is not None
                merged[i] = {**r.placeholder.metadata, **r.metadata} if r.metadata else r.placeholder.metadata
                ends.append(rows.ReplyEnd(r.message_id, r.content, r.status, r.error, merged[i]))
            stored = rows.replies_end(ends, now)
            totals = _account(
                [(requests[i].session_id, owners[requests[i].session_id], merged[i], requests[i].content) for i in live if requests[i].message_id in stored], now,
            )
            reactions = rows.reactions_of_many(stored)
            for i in live:
                r = requests[i]
                if r.message_id not in stored:
                    alone.append(i)  # no longer streaming: reply_finish decides what to keep
                    continue
                assert r.placeholder is not None
                message = _ended(r.placeholder, r.content, r.status, r.error, now, merged[i])
                data = message_data(message, owners[r.session_id], reactions=reactions[r.message_id])
                outbox.frame(r.session_id, events.message_completed(data, totals.get(r.session_id)))
                results[i] = Finished(stored=True)
    for i in sorted(alone):
        try:
            results[i] = requests[i].alone()
        except Exception as exc:  # handed to its sender; the others are stored
            results[i] = exc
    return results  # type: ignore[return-value]


def reply_fail_plainly(*, message_id: uuid.UUID, content: str, error: str) -> None:
    """Last resort when `reply_finish` keeps failing: one UPDATE, so the reply does not stay `streaming`.

    Its session's queue, if it has one, is asked to go on (its step locks the session itself).
    """
    session_id = Message.objects.filter(pk=message_id).values_list("session_id", flat=True).first()
    Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(
        content=content, status=Message.Status.FAILED, error=error, completed_at=timezone.now(), worker_id=""
    )
    if session_id is not None:
        outbox.after_commit(outbox.QueueNext(session_id))


def replies_mark_interrupted(*, session_id: uuid.UUID | None = None, running_here: Collection[uuid.UUID] = ()) -> list[Message]:
    """Mark `interrupted` the streaming replies whose server process is dead; their text so far stays.

    A reply generated by a live process (this one or another) is never touched. `running_here`:
    the replies this process is generating now (the engine knows them; rows cannot tell).
    """
    running = Message.objects.filter(status=Message.Status.STREAMING)
    if session_id is not None:
        running = running.filter(session_id=session_id)
    candidates = list(running.values_list("pk", "session_id", "worker_id", "created_at"))
    if not candidates:
        return []
    dead = liveness.dead_worker_ids({worker_id for _, _, worker_id, _ in candidates})
    marked: list[Message] = []
    now = timezone.now()
    for message_id, message_session_id, worker_id, created_at in candidates:
        if worker_id == liveness.WORKER_ID:
            # Ours, but no task generates it (it died unexpectedly): end it too, once it is not just starting.
            if message_id in running_here or (now - created_at).total_seconds() < 15:
                continue
        elif worker_id not in dead:
            continue
        try:
            with session_step(message_session_id) as locked:
                message = Message.objects.select_for_update(of=("self",)).select_related("agent", "session").filter(pk=message_id).first()
                if message is None or message.status != Message.Status.STREAMING or message.worker_id != worker_id:
                    continue
                # The session row changes too: a turn waiting for its lock then reads what this step did
                # (chat.turn.rows.lock_for_turns), and the reply's end is activity.
                locked.touch(now)
                message.status, message.error, message.completed_at, message.worker_id = Message.Status.INTERRUPTED, INTERRUPTED, now, ""
                message.save(update_fields=["status", "error", "completed_at", "worker_id"])
                branches.attach_versions([message], lines=message.session.lines)
                outbox.frame(message.session_id, events.message_completed(message_data(message, with_reactions=True)))
        except NotFound:
            continue
        marked.append(message)
    return marked
