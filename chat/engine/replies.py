"""Generating a reply: a task owned by the server process, not by any socket.

One `ReplyRun` per streaming reply. The provider's pieces are appended in memory; the hub
sends them as `message.delta` frames on its tick; the process's checkpointer saves the text so
far of every running reply at most once per CHECKPOINT_INTERVAL, in one transaction for all of
them; at the end one transaction stores the full text, status and usage. No transaction or row
lock is held while the model streams, and nothing touches the database per delta.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings
from django.db import InterfaceError, OperationalError

from chat import events
from chat.engine.hub import Hub, Sink
from chat.models import Message
from chat.providers import Provider, ProviderError, get_provider
from chat.turn import context as turn_context
from chat.turn import replies as turn_replies
from chat.turn.context import ReplyContext
from chat.turn.liveness import WORKER_ID
from chat.validation import storable_text
from chatproject import metrics

logger = logging.getLogger(__name__)

EARLY_CANCEL_SECONDS = 30.0
CHECKPOINT_CHUNK = 100
FINISH_ATTEMPTS = 4  # saves of a reply's end that fail for another reason than the database being away
FINISH_BACKOFF_MAX = 5.0  # seconds between saves while the database is away


class Steps(Protocol):
    """How the engine runs sync steps (chat.engine.process.Engine)."""

    async def write(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any: ...

    async def read(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any: ...

    async def send_to_worker(self, worker_id: str, message: dict[str, Any]) -> bool: ...

    async def finish_reply(self, request: turn_replies.FinishRequest) -> turn_replies.Finished: ...


class ReplyRun:
    def __init__(self, message_id: uuid.UUID, session_id: uuid.UUID, hub: Hub) -> None:
        self.message_id = message_id
        self.session_id = session_id
        self._hub = hub
        self.parts: list[str] = []
        self.pending: list[str] = []
        self.length = 0
        # Text up to here has been handed to the sockets (by the hub's tick, see `take`).
        self.sent_offset = 0
        self.saved_length = 0
        self.cancel_requested = False
        # Whether other processes may be listening (the bus clears it when none did; a newcomer sets it).
        self.remote = True
        # Tool calls the model asked for: stored with the final text, run after the reply ends.
        self.tool_calls: list[dict[str, Any]] = []
        self.consume_task: asyncio.Task | None = None
        self.started_at = time.perf_counter()

    def __hash__(self) -> int:
        return id(self)

    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def append(self, piece: str) -> None:
        if not piece:
            return
        piece = storable_text(piece)
        if self.length + len(piece) > settings.CHAT["MAX_REPLY_CHARS"]:
            raise ProviderError(f"The reply was cut off at {settings.CHAT['MAX_REPLY_CHARS']} characters.")
        self.parts.append(piece)
        self.pending.append(piece)
        self.length += len(piece)
        self._hub.mark_dirty(self)

    def take(self) -> tuple[int, str] | None:
        """The text not yet sent, with its offset; it counts as sent from now on."""
        if not self.pending:
            return None
        delta = "".join(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending.clear()
        offset = self.sent_offset
        if offset == 0:
            metrics.FIRST_DELTA_SECONDS.observe(time.perf_counter() - self.started_at)
        self.sent_offset = offset + len(delta)
        return offset, delta

    def cancel(self) -> None:
        self.cancel_requested = True
        if self.consume_task is not None and not self.consume_task.done():
            self.consume_task.cancel()

    def catch_up_text(self, offset: int) -> str | None:
        """The text sent so far from `offset` on, as a frame, for a socket that joined mid-stream."""
        if offset >= self.sent_offset:
            return None
        return events.encode_delta(str(self.message_id), offset, self.text()[offset : self.sent_offset])


@dataclass(frozen=True)
class Ended:
    """How a reply ended, and what the turn does next (chat.engine.drive)."""

    message_id: uuid.UUID
    status: str
    advance: bool
    plan_id: str | None


async def _consume(run: ReplyRun, ctx: ReplyContext, provider: Provider, metadata: dict[str, Any]) -> None:
    # aclosing: however the loop ends (cancel, an error, the length limit), the provider's
    # stream is closed at once, so its HTTP request stops and the model stops generating.
    async with contextlib.aclosing(provider.stream(ctx)) as stream:
        async for event in stream:
            if event.kind == "text":
                run.append(event.text)
            elif event.kind == "usage":
                metadata["usage"] = event.data
            elif event.kind == "tool_call":
                run.tool_calls.append(event.data)


class Replies:
    """The replies this process generates, and requests about them from anywhere."""

    def __init__(self, hub: Hub, steps: Steps) -> None:
        self.hub = hub
        self.steps = steps
        self.runs: dict[uuid.UUID, ReplyRun] = {}
        # Cancels that arrived before their reply's task registered (message id → monotonic time).
        self._early_cancels: dict[uuid.UUID, float] = {}

    def running(self) -> frozenset[uuid.UUID]:
        return frozenset(self.runs)

    async def stream(self, message_id: uuid.UUID, ctx: ReplyContext | None = None) -> Ended | None:
        """Generate the reply to its end and store it. None when it was not streaming (or already runs here)."""
        if message_id in self.runs:
            return None
        if ctx is None:
            try:
                ctx = await self.steps.read(turn_context.load_context, message_id)
            except Exception:
                logger.exception("Reply %s could not start", message_id)
                await self._finish(message_id, None, content="", status=Message.Status.FAILED, error="The reply could not start.")
                return None
            if ctx is None:
                return None
        run = ReplyRun(message_id, uuid.UUID(ctx.session_id), self.hub)
        self.runs[message_id] = run
        if self._early_cancels.pop(message_id, None) is not None:
            run.cancel_requested = True
        metrics.TURNS_STARTED.inc()
        metrics.ACTIVE_REPLIES.inc()
        status, error, metadata = Message.Status.COMPLETE, None, {}
        finished = None
        try:
            try:
                run.consume_task = asyncio.get_running_loop().create_task(_consume(run, ctx, get_provider(ctx.agent), metadata))
                if run.cancel_requested:
                    run.consume_task.cancel()
                await run.consume_task
            except asyncio.CancelledError:
                if run.cancel_requested:
                    status = Message.Status.CANCELLED
                else:  # the process is shutting down: keep the text, say why it stopped
                    status, error = Message.Status.INTERRUPTED, turn_replies.INTERRUPTED
            except ProviderError as exc:
                status, error = Message.Status.FAILED, str(exc) or "The model failed."
            except Exception:
                logger.exception("Reply %s failed", message_id)
                status, error = Message.Status.FAILED, "The reply failed because of an internal error."
            self.hub.flush_run(run)
            tool_calls = run.tool_calls if status == Message.Status.COMPLETE else []
            finished = await self._finish(
                message_id, run.session_id, content=run.text(), status=status, error=error, metadata=metadata, tool_calls=tool_calls, placeholder=ctx.reply,
            )
        finally:
            self.runs.pop(message_id, None)
            metrics.ACTIVE_REPLIES.dec()
            metrics.REPLIES_FINISHED.labels(status).inc()
        advance = finished is not None and finished.advance
        return Ended(message_id=message_id, status=status, advance=advance, plan_id=ctx.extra.get("plan_id"))

    async def _finish(self, message_id: uuid.UUID, session_id: uuid.UUID | None, **fields: Any) -> turn_replies.Finished | None:
        """Store the end of a reply: a reply is never left `streaming`, and its text is not dropped while the database is away.

        While the database cannot be reached (OperationalError, InterfaceError) the text stays in
        this process and the save is retried with backoff, without end: the reply stays in
        `self.runs` meanwhile, so this process's sweep leaves it alone. Any other error is retried
        a few times, then the reply is ended `failed` with its text by a plain UPDATE.
        """
        if session_id is not None:
            away = other = 0
            while other < FINISH_ATTEMPTS:
                try:
                    saved = await self.steps.finish_reply(turn_replies.FinishRequest(message_id, session_id, **fields))
                    if away:
                        logger.warning("Reply %s saved after the database was away for %d attempts", message_id, away)
                    return saved
                except (OperationalError, InterfaceError):
                    away += 1
                    metrics.FINAL_SAVE_RETRIES.inc()
                    if away == 1 or away % 20 == 0:
                        logger.warning("The database is away; reply %s is kept here and saved when it is back (attempt %d)", message_id, away, exc_info=away == 1)
                    await asyncio.sleep(min(FINISH_BACKOFF_MAX, 0.25 * 2 ** min(away - 1, 6)))
                except Exception:
                    other += 1
                    logger.warning("Saving the end of reply %s failed (attempt %d)", message_id, other, exc_info=True)
                    await asyncio.sleep(0.25 * 2 ** (other - 1))
        fields.pop("placeholder", None)
        try:
            await self.steps.write(
                turn_replies.reply_fail_plainly, message_id=message_id, content=fields.get("content", ""),
                error=fields.get("error") or "The reply could not be saved completely.",
            )
        except Exception:
            logger.exception("Reply %s could not be ended; the interrupted sweep will end it", message_id)
        return None

    async def checkpoint(self) -> None:
        """Save the text so far of every running reply that grew: one transaction for all of them."""
        grown = [(run, run.length) for run in self.runs.values() if run.length != run.saved_length]
        started = time.perf_counter()
        # In chunks, each a step of its own: a turn that starts meanwhile waits for one chunk, not for all.
        for first in range(0, len(grown), CHECKPOINT_CHUNK):
            chunk = grown[first : first + CHECKPOINT_CHUNK]
            await self.steps.write(turn_replies.replies_checkpoint, texts=[(run.message_id, run.text()[:length]) for run, length in chunk])
            for run, length in chunk:
                run.saved_length = max(run.saved_length, length)
        if grown:
            metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)

    # Requests from sockets, here or in other processes -----------------------------------------

    async def request_cancel(self, message_id: uuid.UUID, worker_id: str | None = None) -> bool:
        """Stop a running reply wherever it runs. False when it is not running anywhere we can reach."""
        run = self.runs.get(message_id)
        if run is not None:
            run.cancel()
            return True
        if worker_id is None:
            worker_id = await self.steps.read(
                lambda: Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).values_list("worker_id", flat=True).first()
            )
        if not worker_id:
            return False
        if worker_id == WORKER_ID:
            self._note_early_cancel(message_id)
            return True
        return await self.steps.send_to_worker(worker_id, {"op": "cancel", "message_id": str(message_id)})

    async def request_catch_up(self, *, message_id: uuid.UUID, worker_id: str, offset: int, sink: Sink) -> None:
        """Ask the process generating a reply to send this socket the text from `offset` on."""
        run = self.runs.get(message_id)
        if run is not None:
            text = run.catch_up_text(offset)
            if text is not None:
                self.hub.send_to(sink, text)
            return
        if worker_id and worker_id != WORKER_ID:
            await self.steps.send_to_worker(
                worker_id, {"op": "catch_up", "message_id": str(message_id), "offset": offset, "worker": WORKER_ID, "socket": sink.id}
            )

    def _note_early_cancel(self, message_id: uuid.UUID) -> None:
        now = time.monotonic()
        for stale in [k for k, t in self._early_cancels.items() if now - t > EARLY_CANCEL_SECONDS]:
            self._early_cancels.pop(stale, None)
        self._early_cancels[message_id] = now

    async def on_request(self, message: dict[str, Any]) -> None:
        """A request from another process (or its answer) on this process's bus channel."""
        op = message.get("op")
        if op == "deliver":
            sink = self.hub.sinks.get(message.get("socket"))  # type: ignore[arg-type]
            if sink is not None and isinstance(message.get("text"), str):
                self.hub.send_to(sink, message["text"])
            return
        try:
            message_id = uuid.UUID(str(message.get("message_id")))
        except ValueError:
            return
        run = self.runs.get(message_id)
        if op == "cancel":
            if run is None:
                self._note_early_cancel(message_id)
            else:
                run.cancel()
        elif op == "catch_up" and run is not None:
            run.remote = True  # someone elsewhere listens now: deltas go to the bus again
            text = run.catch_up_text(int(message.get("offset") or 0))
            if text is not None:
                await self.steps.send_to_worker(str(message.get("worker")), {"op": "deliver", "socket": message.get("socket"), "text": text})
