"""Versions and branches of a conversation: a reply regenerated, the active branch switched.

An edited message is a turn (`turns.turn_start` with `edit_of`). Both forks keep every earlier
message as it was: the new version is a new message, with the same parent, on a new line of the
tree (chat.branches), and the session's active leaf moves to it. `seq` stays unique and
increasing; nothing is deleted or written again.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from chat import branches, events
from chat.branches import Tip
from chat.exceptions import Busy, InvalidInput, NotFound
from chat.models import Branch, Message
from chat.turn import agentic, budget, liveness, outbox, rows
from chat.turn.context import context_for
from chat.turn.locking import LockedSession, lock_for_turns
from chat.turn.turns import RUNNING, Turn, new_message, replay_turn, reply_agent_for, write_turn

NOT_NOW = "The session's turn is running; wait for it to end (or stop it) first."
QUEUED = "Messages are waiting in this session's queue; wait for their replies first."


def _lock(session_id: uuid.UUID, user: AbstractBaseUser, client_id: str | None = None) -> LockedSession:
    row = lock_for_turns([(session_id, user.pk, client_id)]).get(session_id)
    if row is None or row.checks is None:
        raise NotFound("Session not found.")
    return row


def _idle(row: LockedSession) -> agentic.OpenWork | None:
    """For a step that must not run beside a turn: Busy while one runs or messages are queued.

    Returns what waits for the user (to be superseded by a new version), if anything does.
    """
    assert row.checks is not None
    work = agentic.open_work(locked=row) if row.checks.open_calls or row.checks.open_plans else None
    if row.checks.streaming:
        raise Busy(RUNNING)
    if work is not None and work.running:
        raise Busy(work.why)
    if row.session.queued:
        raise Busy(QUEUED)
    return work if work is not None and (work.calls or work.plans) else None


def reply_regenerate(*, user: AbstractBaseUser, session_id: uuid.UUID, message_id: uuid.UUID, client_id: str | None = None) -> Turn:
    """Another answer to what an assistant's text reply answered: a new version of it, streamed like any reply.

    The old reply stays as it was (an earlier version); the new one has its parent and becomes the
    end of the active branch. The same agent answers, or the session's router when that agent is
    gone. Busy while the session's turn runs; what waits for the user is superseded, as by a new
    message. A repeated `client_id` returns the reply it made (created=False).
    """
    if (refused := budget.take_turn(user.pk)) is not None:  # a regenerated reply is a turn of the minute's budget
        raise refused
    with transaction.atomic():
        row = _lock(session_id, user, client_id)
        checks = row.checks
        assert checks is not None
        if checks.seen_client_id is not None:
            return replay_turn(row.session, checks.seen_client_id, user.pk)
        work = _idle(row)
        assert checks is not None
        row.relink()
        target = Message.objects.select_related("agent", "reply_to", "parent").filter(pk=message_id, session_id=session_id).first()
        if target is None:
            raise NotFound("Message not found.")
        if target.role != Message.Role.ASSISTANT or target.type != Message.Type.TEXT:
            raise InvalidInput("Only an assistant's text reply can be regenerated.", field="message_id")
        if (full := budget.replies_full(checks.owner_streaming)) is not None:
            raise full
        if (spent := budget.tokens_spent(checks.owner_tokens_today, checks.owner_budget)) is not None:
            raise spent
        if work is not None:
            agentic.supersede(locked=row, work=work)
        reply, branch = _new_version(row, target, client_id)
        turn = Turn(user_message=target.reply_to or reply, reply=reply, created=True, messages=[reply], branch=branch)
        write_turn(row, turn)
    prompt = target.reply_to.content if target.reply_to is not None and not reply.metadata["context"].get("continuation") else ""
    if reply.metadata["context"].get("instruction"):
        context = reply.metadata["context"]
        prompt = f"Step {context.get('step')} of {context.get('steps')} of the approved plan: {context['instruction']}"
    outbox.after_commit(outbox.StartReply(reply.pk, context_for(reply, prompt=prompt, lines=turn.lines)))
    return turn


def _new_version(locked: LockedSession, target: Message, client_id: str | None) -> tuple[Message, Branch]:
    """The streaming placeholder of a new version of `target`, under its parent, and its new line (written by the caller)."""
    session = locked.session
    agent = target.agent if target.agent is not None and target.agent.is_active else None
    if agent is None:
        agent = reply_agent_for(session=session, content=target.reply_to.content if target.reply_to else "", agents=rows.active_agents())
    # What the first version was asked to do (a continuation after tools, a plan step's instruction),
    # but not its plan: that plan has moved on, and the new version does not move it again.
    context: dict[str, Any] = {k: v for k, v in (target.metadata.get("context") or {}).items() if k != "plan_id"}
    now = locked.touch(timezone.now())
    reply = new_message(
        session, seq=locked.allocate(), role=Message.Role.ASSISTANT, content="", status=Message.Status.STREAMING, agent=agent,
        reply_to=target.reply_to, client_id=client_id, worker_id=liveness.WORKER_ID, created_at=now,
        metadata={"context": context, "round": int(target.metadata.get("round", 0) or 0), "regenerates": str(target.pk)},
    )
    parent = branches.tip_of(target.parent) if target.parent is not None else None
    reply._versions = [*branches.sibling_ids(session.pk, target.parent_id), str(reply.pk)]  # type: ignore[attr-defined]
    return reply, locked.fork(reply, parent)


def branch_switch(*, user: AbstractBaseUser, session_id: uuid.UUID, message_id: uuid.UUID) -> Tip:
    """Make the branch through `message_id` the session's active one: it ends at the newest message under it.

    Choosing a version (`< 2 / 3 >`) is this with that version's id. Every socket gets
    `branch.switched` and reads the branch again. Busy while the session's turn runs or waits
    for the user (what waits belongs to the branch it is on), or messages are queued.
    """
    with transaction.atomic():
        row = _lock(session_id, user)
        if _idle(row) is not None:
            raise Busy("Something waits for your answer on this branch (an approval, a tool, a plan); answer it first.")
        found = Message.objects.filter(pk=message_id, session_id=session_id).values_list("pk", "line", "seq", "depth").first()
        if found is None:
            raise NotFound("Message not found.")
        leaf = branches.latest_leaf_under(session_id, Tip(*found)) if row.session.lines > 1 else None
        if leaf is None:  # one line: the branch through any message is the whole conversation
            leaf = row.leaf_tip() or Tip(*found)
        if leaf.id != row.session.leaf_id:
            row.switch(leaf)
            row.save()
        outbox.frame(session_id, events.branch_switched(session_id, leaf.id))
        return leaf
