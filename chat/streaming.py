"""Generating a reply: a task owned by the server process, not by any socket.

One `ReplyRun` per streaming reply. The provider's text is appended in memory; a sender task
broadcasts it as `message.delta` frames (several pieces become one frame when the layer is
slower than the model), a checkpoint task saves the text so far at most once per
CHECKPOINT_INTERVAL with one UPDATE, and at the end one transaction stores the full text,
status and usage. No transaction or row lock is held while the model streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from chat import events, metrics_hooks, services, workers
from chat.models import Message
from chat.providers import ProviderError, ReplyContext, get_provider

logger = logging.getLogger(__name__)


class ReplyRun:
    def __init__(self, message_id: uuid.UUID, session_id: uuid.UUID) -> None:
        self.message_id = message_id
        self.session_id = session_id
        self.parts: list[str] = []
        self.pending: list[str] = []
        self.length = 0
        # Text up to here has been handed to the layer (set before the send, see `catch_up`).
        self.sent_offset = 0
        self.saved_length = 0
        self.cancel_requested = False
        # Tool calls the model asked for: stored with the final text, run after the reply ends.
        self.tool_calls: list[dict[str, Any]] = []
        self.consume_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def append(self, piece: str) -> None:
        if not piece:
            return
        piece = services.storable_text(piece)
        if self.length + len(piece) > settings.CHAT["MAX_REPLY_CHARS"]:
            raise ProviderError(f"The reply was cut off at {settings.CHAT['MAX_REPLY_CHARS']} characters.")
        self.parts.append(piece)
        self.pending.append(piece)
        self.length += len(piece)
        self._idle.clear()
        self._wake.set()

    def cancel(self) -> None:
        self.cancel_requested = True
        if self.consume_task is not None and not self.consume_task.done():
            self.consume_task.cancel()

    async def sender(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                delta = "".join(self.pending)
                self.pending.clear()
                offset = self.sent_offset
                self.sent_offset = offset + len(delta)
                await events.abroadcast(self.session_id, events.message_delta(self.message_id, offset, delta))
                metrics_hooks.delta_sent()
            self._idle.set()

    async def flush(self) -> None:
        if self.pending:
            self._wake.set()
        await self._idle.wait()

    async def checkpointer(self) -> None:
        interval = settings.CHAT["CHECKPOINT_INTERVAL"]
        while True:
            await asyncio.sleep(interval)
            if self.length != self.saved_length:
                length = self.length
                try:
                    await database_sync_to_async(services.reply_checkpoint)(message_id=self.message_id, content=self.text())
                    self.saved_length = length
                except Exception:  # keep streaming; the next checkpoint or the final save catches up
                    logger.warning("Checkpoint of reply %s failed", self.message_id, exc_info=True)

    def catch_up_frame(self, offset: int) -> dict[str, Any] | None:
        """The text broadcast so far from `offset` on, for a socket that joined mid-stream."""
        if offset >= self.sent_offset:
            return None
        return events.message_delta(self.message_id, offset, self.text()[offset : self.sent_offset])


_runs: dict[uuid.UUID, ReplyRun] = {}
# Cancels that arrived before their reply's task registered (message id → monotonic time).
_early_cancels: dict[uuid.UUID, float] = {}
EARLY_CANCEL_SECONDS = 30.0


def active_run(message_id: uuid.UUID) -> ReplyRun | None:
    return _runs.get(message_id)


def history_items(messages: list[Message]) -> list[dict[str, Any]]:
    """The conversation as provider-neutral items: text turns, tool calls and tool results."""
    items: list[dict[str, Any]] = []
    for m in messages:
        if m.type == Message.Type.TEXT and m.content and m.role in (Message.Role.USER, Message.Role.ASSISTANT, Message.Role.SYSTEM):
            items.append({"role": m.role, "content": m.content})
        elif m.type == Message.Type.TOOL_CALL:
            call = {"id": m.metadata.get("provider_call_id") or m.metadata.get("tool_call_id"), "name": m.metadata.get("name"),
                    "arguments": m.metadata.get("arguments") or {}}
            if items and items[-1]["role"] == "assistant" and "tool_calls" in items[-1]:
                items[-1]["tool_calls"].append(call)
            else:
                items.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif m.type == Message.Type.TOOL_RESULT:
            items.append({"role": "tool", "tool_call_id": m.metadata.get("provider_call_id") or m.metadata.get("tool_call_id"),
                          "content": m.content})
    return items


def load_context(message_id: uuid.UUID) -> ReplyContext | None:
    """The reply, its agent, and the recent history before it: a constant number of queries."""
    message = Message.objects.select_related("agent", "reply_to").filter(pk=message_id).first()
    if message is None or message.status != Message.Status.STREAMING:
        return None
    limit = settings.CHAT["HISTORY_MESSAGES"]
    earlier = list(
        Message.objects.filter(
            session_id=message.session_id, seq__lt=message.seq,
            type__in=[Message.Type.TEXT, Message.Type.TOOL_CALL, Message.Type.TOOL_RESULT],
        )
        .only("role", "type", "content", "metadata")
        .order_by("-seq")[:limit]
    )
    earlier.reverse()
    extra = dict(message.metadata.get("context", {})) if isinstance(message.metadata, dict) else {}
    # A continuation after tools answers the same question, already in the history: no new prompt.
    prompt = message.reply_to.content if message.reply_to is not None and not extra.get("continuation") else ""
    if extra.get("instruction"):
        prompt = f"Step {extra.get('step')} of {extra.get('steps')} of the approved plan: {extra['instruction']}"
    from chat import tools

    return ReplyContext(
        message_id=str(message.pk),
        session_id=str(message.session_id),
        agent=message.agent,
        history=history_items(earlier),
        prompt=prompt,
        tools=tools.specs_for_agent(message.agent),
        extra=extra,
    )


async def _finish(message_id: uuid.UUID, **fields: Any) -> None:
    """Store the end of a reply; retried, then a plain UPDATE: a reply is never left `streaming`."""
    for attempt in range(4):
        try:
            await database_sync_to_async(services.reply_finish)(message_id=message_id, **fields)
            return
        except Exception:
            logger.warning("Saving the end of reply %s failed (attempt %d)", message_id, attempt + 1, exc_info=True)
            await asyncio.sleep(0.25 * 2**attempt)
    try:
        await database_sync_to_async(services.reply_fail_plainly)(
            message_id=message_id, content=fields.get("content", ""), error="The reply could not be saved completely."
        )
    except Exception:
        logger.exception("Reply %s could not be ended; the interrupted sweep will end it", message_id)


async def run_reply(message_id: uuid.UUID) -> None:
    if message_id in _runs:
        return
    try:
        await workers.process.ensure_started(listen=asyncio.get_running_loop() is not _fallback_loop)
        ctx = await database_sync_to_async(load_context)(message_id)
    except Exception:
        logger.exception("Reply %s could not start", message_id)
        await _finish(message_id, content="", status=Message.Status.FAILED, error="The reply could not start.")
        return
    if ctx is None:
        return
    run = ReplyRun(message_id, uuid.UUID(ctx.session_id))
    _runs[message_id] = run
    if _early_cancels.pop(message_id, None) is not None:
        run.cancel_requested = True
    metrics_hooks.reply_started()
    sender = asyncio.create_task(run.sender())
    checkpointer = asyncio.create_task(run.checkpointer())
    status, error, metadata = Message.Status.COMPLETE, None, {}
    try:
        from chat import turns

        run.consume_task = asyncio.create_task(turns.consume(run, ctx, get_provider(ctx.agent), metadata))
        if run.cancel_requested:
            run.consume_task.cancel()
        await run.consume_task
    except asyncio.CancelledError:
        if run.cancel_requested:
            status = Message.Status.CANCELLED
        else:  # the process is shutting down: keep the text, say why it stopped
            status, error = Message.Status.INTERRUPTED, "The server stopped while this reply was being written."
    except ProviderError as exc:
        status, error = Message.Status.FAILED, str(exc) or "The model failed."
    except Exception:
        logger.exception("Reply %s failed", message_id)
        status, error = Message.Status.FAILED, "The reply failed because of an internal error."
    try:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(run.flush(), timeout=5)
        sender.cancel()
        checkpointer.cancel()
        tool_calls = run.tool_calls if status == Message.Status.COMPLETE else []
        await _finish(message_id, content=run.text(), status=status, error=error, metadata=metadata, tool_calls=tool_calls)
    finally:
        _runs.pop(message_id, None)
        metrics_hooks.reply_finished(status)
    from chat import turns

    await turns.after_reply(message_id, status, bool(run.tool_calls), ctx.extra.get("plan_id"))


# Starting replies from sync code -------------------------------------------------

_fallback_loop: asyncio.AbstractEventLoop | None = None
_fallback_lock = threading.Lock()


def _loop_for_replies() -> asyncio.AbstractEventLoop:
    """The server's event loop; outside a server (a management command, a sync test) a private one."""
    global _fallback_loop
    loop = workers.process.loop
    if loop is not None and loop.is_running() and not loop.is_closed():
        return loop
    with _fallback_lock:
        if _fallback_loop is None or _fallback_loop.is_closed():
            _fallback_loop = asyncio.new_event_loop()
            threading.Thread(target=_fallback_loop.run_forever, name="reply-loop", daemon=True).start()
        workers.process.loop = None
        return _fallback_loop


_background: set[asyncio.Task] = set()


def _done(task: asyncio.Task) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("Background task failed", exc_info=task.exception())


def spawn(coro: Any) -> None:
    """Run a coroutine as a task of the process, kept referenced until it ends.

    The task starts with an empty context: it belongs to the process, not to the request or
    socket that started it (and must not inherit asgiref's "inside the sync thread" marker).
    """
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None and (workers.process.loop is None or workers.process.loop is running):
        workers.process.loop = running
        loop = running
    else:
        loop = _loop_for_replies()

    def _start() -> None:
        task = loop.create_task(coro, context=contextvars.Context())
        _background.add(task)
        task.add_done_callback(_done)

    if loop is running:
        _start()
    else:
        loop.call_soon_threadsafe(_start, context=contextvars.Context())


def start_reply_sync(message_id: uuid.UUID) -> None:
    spawn(run_reply(message_id))


# Cancel and catch-up across processes ----------------------------------------------


async def request_cancel(message_id: uuid.UUID, worker_id: str | None = None) -> bool:
    """Stop a running reply wherever it runs. False when it is not running anywhere we can reach."""
    run = _runs.get(message_id)
    if run is not None:
        run.cancel()
        return True
    if worker_id is None:
        worker_id = await database_sync_to_async(
            lambda: Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).values_list("worker_id", flat=True).first()
        )()
    if not worker_id:
        return False
    channel = await database_sync_to_async(workers.worker_channel)(worker_id)
    layer = get_channel_layer()
    if not channel or layer is None:
        return False
    await layer.send(channel, {"type": "reply.cancel", "message_id": str(message_id)})
    return True


def request_cancel_sync(message_id: uuid.UUID, worker_id: str | None = None) -> None:
    spawn(request_cancel(message_id, worker_id))


async def request_catch_up(*, message_id: uuid.UUID, worker_id: str, offset: int, reply_channel: str) -> None:
    """Ask the process generating a reply to send this socket the text from `offset` on."""
    run = _runs.get(message_id)
    layer = get_channel_layer()
    if layer is None:
        return
    if run is not None:
        frame = run.catch_up_frame(offset)
        if frame is not None:
            await layer.send(reply_channel, events.layer_message(frame))
        return
    channel = await database_sync_to_async(workers.worker_channel)(worker_id)
    if channel:
        await layer.send(
            channel, {"type": "reply.catch_up", "message_id": str(message_id), "offset": offset, "reply_channel": reply_channel}
        )


async def handle_worker_message(message: dict[str, Any]) -> None:
    kind = message.get("type")
    try:
        message_id = uuid.UUID(str(message.get("message_id")))
    except ValueError:
        return
    run = _runs.get(message_id)
    if run is None:
        if kind == "reply.cancel":
            now = time.monotonic()
            for stale in [k for k, t in _early_cancels.items() if now - t > EARLY_CANCEL_SECONDS]:
                _early_cancels.pop(stale, None)
            _early_cancels[message_id] = now
        return
    if kind == "reply.cancel":
        run.cancel()
    elif kind == "reply.catch_up":
        frame = run.catch_up_frame(int(message.get("offset", 0)))
        if frame is not None:
            layer = get_channel_layer()
            await layer.send(str(message["reply_channel"]), events.layer_message(frame))


async def shutdown() -> None:
    """Stop every reply of this process, keeping its text (status `interrupted`)."""
    tasks = list(_background)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
