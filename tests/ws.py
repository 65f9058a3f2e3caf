"""Helpers for socket tests with Channels' WebsocketCommunicator."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from chatproject.asgi import application


def token_for(user: Any) -> str:
    token, _ = Token.objects.get_or_create(user=user)
    return token.key


async def open_socket(session_id: Any, *, token: str | None = None, headers: list | None = None) -> WebsocketCommunicator:
    """Connect with a token header; returns the communicator after `session.ready` arrived."""
    all_headers = list(headers or [])
    if token is not None:
        all_headers.append((b"authorization", f"Token {token}".encode()))
    comm = WebsocketCommunicator(application, f"/ws/sessions/{session_id}/", headers=all_headers)
    connected, _ = await comm.connect(timeout=10)
    assert connected
    return comm


async def next_frame(comm: WebsocketCommunicator, timeout: float = 10) -> dict[str, Any]:
    return json.loads(await comm.receive_from(timeout=timeout))


async def frames_until(
    comm: WebsocketCommunicator, frame_type: str, *, timeout: float = 20, where: Any = None
) -> list[dict[str, Any]]:
    """Every frame up to and including the first of `frame_type` (matching `where`, if given)."""
    frames: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"no {frame_type} within {timeout}s; got {[f['type'] for f in frames][-20:]}")
        frame = await next_frame(comm, timeout=remaining)
        frames.append(frame)
        if frame["type"] == frame_type and (where is None or where(frame)):
            return frames


async def send(comm: WebsocketCommunicator, frame: Any) -> None:
    await comm.send_to(text_data=json.dumps(frame))


def merge_text(snapshot: str, frames: list[dict[str, Any]], message_id: str) -> str:
    """What a client shows: the snapshot, then deltas by offset (repeats dropped, gaps ignored)."""
    text = snapshot
    for frame in frames:
        if frame["type"] == "message.delta" and frame["message_id"] == message_id:
            offset, delta = frame["offset"], frame["delta"]
            if offset <= len(text) < offset + len(delta):
                text += delta[len(text) - offset :]
    return text


@database_sync_to_async
def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)
