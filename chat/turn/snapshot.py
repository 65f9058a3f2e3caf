"""What a socket gets when it opens (or resyncs): the session, replies still streaming, what waits."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser

from chat.models import Message
from chat.turn import agentic, replies
from sessions_app import selectors as session_selectors
from sessions_app.serializers import session_data


@dataclass(frozen=True)
class Snapshot:
    frame: dict[str, Any]
    # (message_id, worker_id, offset) of each reply still streaming: the rest comes from its process.
    active: list[tuple[uuid.UUID, str, int]]


def session_snapshot(*, user: AbstractBaseUser, session_id: uuid.UUID, running_here: Collection[uuid.UUID] = ()) -> Snapshot:
    """The `session.ready` frame. Replies of dead processes are marked `interrupted` first, so `active` lists live ones only.

    Raises NotFound for a missing or foreign session.
    """
    session = session_selectors.session_get(user=user, session_id=session_id)
    replies.replies_mark_interrupted(session_id=session.pk, running_here=running_here)
    active = list(Message.objects.filter(session_id=session.pk, status=Message.Status.STREAMING).only("pk", "content", "worker_id").order_by("seq"))
    frame = {
        "type": "session.ready",
        "session": session_data(session),
        "last_seq": session.seq,
        "active": [{"message_id": str(m.pk), "offset": len(m.content), "content": m.content} for m in active],
        "pending": agentic.pending_items(session_id=session.pk),
    }
    return Snapshot(frame=frame, active=[(m.pk, m.worker_id, len(m.content)) for m in active])
