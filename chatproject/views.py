from __future__ import annotations

import asyncio

from django.db import connection
from django.http import HttpRequest, JsonResponse

from chat.engine.process import engine

TIMEOUT = 2.0


def _database_answers() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database and the way to other processes (Redis, when configured) answer, each within 2 s; 503 otherwise,
    and 503 `draining` from the moment the process was told to stop.

    Async, so a hanging broker never holds a thread. The database is asked on the engine's reading
    threads, so a queue there shows too. The second check keeps the name `channel_layer`, which
    monitoring already knows.
    """
    if engine.draining:
        # Shutting down (SIGTERM): at once, so a balancer that checks sends nothing new here.
        return JsonResponse({"status": "draining"}, status=503)
    checks = {"database": "ok", "channel_layer": "ok"}
    try:
        await asyncio.wait_for(engine.read(_database_answers), TIMEOUT)
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        if not await asyncio.wait_for(engine.bus_answers(), TIMEOUT):
            checks["channel_layer"] = "error: no answer"
    except Exception as exc:
        checks["channel_layer"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse({"status": "ok" if healthy else "unavailable", **checks}, status=200 if healthy else 503)
