"""Server-to-client frames: built here as plain dicts, encoded to JSON once per frame.

Steps record frames in the outbox (chat.turn.outbox); the engine's hub (chat.engine.hub)
encodes each once and writes the same text to every socket of the session.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

_encode_plain = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_encode_django = DjangoJSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode(frame: dict[str, Any]) -> str:
    """A frame as JSON text. Frames hold plain JSON values; dates or UUIDs that slipped in are written as Django writes them."""
    try:
        return _encode_plain(frame)
    except TypeError:
        return _encode_django(frame)


_dumps_str = json.JSONEncoder(ensure_ascii=False).encode


def encode_delta(message_id: str, offset: int, delta: str) -> str:
    """A `message.delta` frame as text, exactly what `encode(message_delta(...))` gives, without the generic encoder."""
    return f'{{"type":"message.delta","message_id":"{message_id}","offset":{offset},"delta":{_dumps_str(delta)}}}'


# Frame builders ---------------------------------------------------------------


def message_created(message_data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message.created", "message": message_data}


def message_completed(message_data: dict[str, Any], session_usage: dict[str, int] | None = None) -> dict[str, Any]:
    """`session_usage`: the session's token totals, on the frame of a reply's end (they changed with it)."""
    if session_usage is None:
        return {"type": "message.completed", "message": message_data}
    return {"type": "message.completed", "message": message_data, "session_usage": session_usage}


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


def queue_updated(session_id: uuid.UUID | str, queue: list[dict[str, Any]]) -> dict[str, Any]:
    """The session's queued messages (`QueuedMessage` shapes), in the order they will be answered, after any change."""
    return {"type": "queue.updated", "session": str(session_id), "queue": queue}


def branch_switched(session_id: uuid.UUID | str, leaf_id: uuid.UUID | str | None) -> dict[str, Any]:
    """The session's active branch changed (a version chosen, an edit, a regenerated reply): it now ends at `leaf`."""
    return {"type": "branch.switched", "session": str(session_id), "leaf": str(leaf_id) if leaf_id is not None else None}


def error(code: str, detail: str, request_id: Any = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
    if request_id is not None:
        frame["request_id"] = request_id
    return frame
