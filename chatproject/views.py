from __future__ import annotations

import asyncio
import uuid

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse

TIMEOUT = 2.0


async def _layer_roundtrip() -> bool:
    layer = get_channel_layer()
    if layer is None:
        return False
    channel = await layer.new_channel()
    token = uuid.uuid4().hex
    await layer.send(channel, {"type": "healthz", "token": token})
    message = await layer.receive(channel)
    return message.get("token") == token


def _database_answers() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database and the channel layer answer (each within 2 s), 503 otherwise.

    Async, so a hanging broker never holds the thread the database work shares.
    """
    checks = {"database": "ok", "channel_layer": "ok"}
    try:
        await asyncio.wait_for(sync_to_async(_database_answers)(), TIMEOUT)
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        if not await asyncio.wait_for(_layer_roundtrip(), TIMEOUT):
            checks["channel_layer"] = "error: no answer"
    except Exception as exc:
        checks["channel_layer"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse({"status": "ok" if healthy else "unavailable", **checks}, status=200 if healthy else 503)
