"""Server-to-client frames: built here, sent to every socket of a session through the channel layer.

Frames are encoded to JSON once, here; consumers forward the text as it is. Frames about
committed rows are sent only after the transaction commits (`broadcast_on_commit`).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

logger = logging.getLogger(__name__)

# The group message type consumers handle: `{"type": "chat.frame", "text": "<json>"}`.
FRAME = "chat.frame"


def group_name(session_id: uuid.UUID | str) -> str:
    return f"session.{uuid.UUID(str(session_id)).hex}"


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, cls=DjangoJSONEncoder, ensure_ascii=False, separators=(",", ":"))


def layer_message(frame: dict[str, Any]) -> dict[str, str]:
    return {"type": FRAME, "text": encode(frame)}


async def abroadcast(session_id: uuid.UUID | str, frame: dict[str, Any]) -> None:
    """Send a frame to every socket of the session. At most once: the database stays the truth."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(group_name(session_id), layer_message(frame))
    except Exception:  # a full or unreachable layer must not break the turn
        logger.warning("group_send failed for session %s", session_id, exc_info=True)


def broadcast(session_id: uuid.UUID | str, frame: dict[str, Any]) -> None:
    """Sync variant of `abroadcast`, for services and views."""
    async_to_sync(abroadcast)(session_id, frame)


def broadcast_on_commit(session_id: uuid.UUID | str, frame: dict[str, Any]) -> None:
    transaction.on_commit(lambda: broadcast(session_id, frame))


# Frame builders ---------------------------------------------------------------


def message_created(message_data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message.created", "message": message_data}


def message_completed(message_data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message.completed", "message": message_data}


def message_delta(message_id: uuid.UUID | str, offset: int, delta: str) -> dict[str, Any]:
    return {"type": "message.delta", "message_id": str(message_id), "offset": offset, "delta": delta}


def reaction_updated(message_id: uuid.UUID | str, reactions: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "reaction.updated", "message_id": str(message_id), "reactions": reactions}


def session_updated(session_data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "session.updated", "session": session_data}


def agent_switched(session_data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "agent.switched", "session": session_data}


def session_deleted(session_id: uuid.UUID | str) -> dict[str, Any]:
    return {"type": "session.deleted", "id": str(session_id)}


def error(code: str, detail: str, request_id: Any = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
    if request_id is not None:
        frame["request_id"] = request_id
    return frame
