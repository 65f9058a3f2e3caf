"""The baseline for stream_bench.py: a bare `websockets` server streaming the same frames.

No Django, no Channels, no channel layer, no database. Every socket connected to it is one
"session": when any socket sends `{"type": "user_message", "content": "/slow N"}`, the server
sends every connected socket the same frames ours sends for that turn — `message.created`,
then N `message.delta` frames ("chunk i ", each JSON-encoded once), then `message.completed`
with the full text — one frame per delta, as fast as the sockets take them.

    python bench/bare_server.py PORT
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import uuid
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

_SLOW = re.compile(r"^/slow(?:\s+(\d+))?\s*$")
MAX_DELTAS = 5000  # the demo provider's cap for /slow

clients: set[ServerConnection] = set()


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


async def send_all(text: str) -> None:
    for ws in list(clients):
        try:
            await ws.send(text)
        except ConnectionClosed:
            clients.discard(ws)


async def stream(count: int) -> None:
    message_id = str(uuid.uuid4())
    await send_all(encode({"type": "message.created", "message": {"id": message_id, "role": "assistant", "status": "streaming", "content": ""}}))
    offset = 0
    parts: list[str] = []
    for i in range(1, count + 1):
        delta = f"chunk {i} "
        await send_all(encode({"type": "message.delta", "message_id": message_id, "offset": offset, "delta": delta}))
        parts.append(delta)
        offset += len(delta)
    message = {"id": message_id, "role": "assistant", "status": "complete", "content": "".join(parts)}
    await send_all(encode({"type": "message.completed", "message": message}))


async def handler(ws: ServerConnection) -> None:
    clients.add(ws)
    try:
        await ws.send(encode({"type": "session.ready"}))
        async for text in ws:
            try:
                frame = json.loads(text)
            except ValueError:
                continue
            match = _SLOW.match(str(frame.get("content", ""))) if isinstance(frame, dict) else None
            if match:
                await stream(min(int(match.group(1) or 30), MAX_DELTAS))
    finally:
        clients.discard(ws)


async def main(port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    # No permessage-deflate: daphne does not compress either, and the client does not offer it.
    async with serve(handler, "127.0.0.1", port, max_size=2**20, compression=None):
        print("ready", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
