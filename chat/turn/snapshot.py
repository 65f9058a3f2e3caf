"""What a socket gets when it opens (or resyncs): the session, replies still streaming, what waits."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser

from chat import selectors, usage
from chat.exceptions import NotFound
from chat.models import Message
from chat.serializers import iso_datetime
from chat.turn import agentic, replies, rows


@dataclass(frozen=True)
class Snapshot:
    frame: dict[str, Any]
    # (message_id, worker_id, offset) of each reply still streaming: the rest comes from its process.
    active: list[tuple[uuid.UUID, str, int]]


def session_snapshot(*, user: AbstractBaseUser, session_id: uuid.UUID, running_here: Collection[uuid.UUID] = ()) -> Snapshot:
    """The `session.ready` frame. Replies of dead processes are marked `interrupted` first, so `active` lists live ones only.

    One statement when nothing streams and nothing waits (what most sockets find); more only
    for what is there. Raises NotFound for a missing or foreign session.
    """
    opened = rows.session_for_socket(session_id=session_id, owner_id=user.pk)
    if opened is None:
        raise NotFound("Session not found.")
    session = opened.session
    active: list[Message] = []
    if opened.streaming:
        replies.replies_mark_interrupted(session_id=session.pk, running_here=running_here)
        active = list(Message.objects.filter(session_id=session.pk, status=Message.Status.STREAMING).only("pk", "content", "worker_id").order_by("seq"))
    frame = {
        "type": "session.ready",
        # The contract's Session, as SessionSerializer gives it.
        "session": {
            "id": str(session.pk), "title": opened.title, "mode": session.mode, "agent": opened.agent_slug,
            "created_at": iso_datetime(opened.created_at), "updated_at": iso_datetime(opened.updated_at), "message_count": session.message_count,
            "usage": usage.as_data(opened.prompt_tokens, opened.completion_tokens),
            "leaf": str(session.leaf_id) if session.leaf_id is not None else None, "on_busy": session.on_busy,
        },
        "last_seq": session.seq,
        "active": [{"message_id": str(m.pk), "offset": len(m.content), "content": m.content} for m in active],
        "pending": agentic.pending_items(session_id=session.pk) if opened.waiting else [],
        "queue": selectors.queue_items(session_id=session.pk) if session.queued else [],
    }
    return Snapshot(frame=frame, active=[(m.pk, m.worker_id, len(m.content)) for m in active])
