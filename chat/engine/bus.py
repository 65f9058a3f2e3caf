"""Across processes: frames for sessions watched elsewhere, and requests to the process that runs a reply.

One process alone (the embedded default) needs nothing: `LocalBus` keeps everything in the
process. Several processes share Redis through `RedisBus`, on redis-py's asyncio client:

- A process that has sockets of a session subscribes to the session's channel
  (`<prefix>:s:<session>`), once for all its sockets there; frames of that session generated
  elsewhere arrive once per process, not once per socket.
- A process publishes a frame once per frame, not per socket: everything published during one
  tick of the hub leaves in one pipeline (one round trip). Deltas of a reply are published only
  while some other process listens (PUBLISH answers how many do; a process that starts to listen
  later asks for the text so far first, see chat.engine.replies).
- Each process has its own channel (`<prefix>:w:<worker id>`) for requests about the replies it
  runs (cancel, catch-up) and their answers.

Why not channels_redis: its core layer spends several Redis round trips in series on every
message a process receives (bench/layer_probe.py measures it), so one process tops out far
below the thousand frames a second that twenty streams need; its pub/sub layer fans out per
socket inside the process. Redis pub/sub is at most once, like any channel layer: the database
stays the truth, deltas carry offsets, and after a lost connection every socket of the process
is sent a fresh `session.ready`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as redis

from chat.turn import liveness
from chatproject import metrics

logger = logging.getLogger(__name__)

PROBE_INTERVAL = 5.0  # seconds between probes of the way through Redis and back (chat_bus_roundtrip_seconds)

FrameHandler = Callable[[uuid.UUID, str], None]
ControlHandler = Callable[[dict[str, Any]], Awaitable[None]]


class Listener(Protocol):
    """What the bus tells the hub: a frame from elsewhere, a request or answer, a lost link."""

    def frame_from_bus(self, session_id: uuid.UUID, text: str) -> None: ...

    async def control_from_bus(self, message: dict[str, Any]) -> None: ...

    def bus_reconnected(self) -> None: ...


class Counted(Protocol):
    """What a published delta reports back: whether anyone else listened (see ReplyRun.remote)."""

    remote: bool


class LocalBus:
    """One process: nothing crosses a process boundary."""

    shared = False

    def __init__(self) -> None:
        self.listener: Listener | None = None

    async def start(self, listener: Listener) -> None:
        self.listener = listener

    async def watch(self, session_id: uuid.UUID) -> None:
        return None

    def unwatch(self, session_id: uuid.UUID) -> None:
        return None

    def publish(self, session_id: uuid.UUID, text: str, *, counted: Counted | None = None, self_listens: bool = False) -> None:
        return None

    def flush(self) -> None:
        return None

    async def send_to_worker(self, worker_id: str, message: dict[str, Any]) -> bool:
        """Only this process is reachable."""
        if worker_id == liveness.WORKER_ID and self.listener is not None:
            await self.listener.control_from_bus(message)
            return True
        return False

    async def ping(self) -> bool:
        return True

    async def drain(self, timeout: float) -> None:
        return None

    def stop(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisBus:
    shared = True

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_timeout=15, socket_keepalive=True, health_check_interval=10)
        self.listener: Listener | None = None
        self.worker_channel = f"{prefix}:w:{liveness.WORKER_ID}"
        self._watched: dict[str, uuid.UUID] = {}
        self._confirmed: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._pubsub: Any = None
        # Subscribe and unsubscribe commands go out one at a time, in the order they were asked for.
        self._commands = asyncio.Lock()
        self._ever_connected = False
        self._reader: asyncio.Task | None = None
        self._prober: asyncio.Task | None = None
        self._batch: list[tuple[str, bytes, Counted | None, bool]] = []
        self._sending: asyncio.Task | None = None
        self._last_error_log = 0.0
        self.connected = False

    def _session_channel(self, session_id: uuid.UUID) -> str:
        return f"{self.prefix}:s:{session_id.hex}"

    async def start(self, listener: Listener) -> None:
        self.listener = listener
        self._reader = asyncio.get_running_loop().create_task(self._read_forever())
        self._prober = asyncio.get_running_loop().create_task(self._probe_forever())
        await self._subscribe(self.worker_channel)

    # Subscriptions --------------------------------------------------------------------------

    async def _subscribe(self, channel: str, timeout: float = 5.0) -> None:
        """Subscribe and wait until Redis confirms it: frames published after this reach us."""
        if channel in self._confirmed:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(future)
        await self._command("subscribe", channel)
        # Not connected: the reader subscribes everything watched once it is, and confirms then.
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            logger.warning("Redis did not confirm the subscription to %s in %.0f s", channel, timeout)

    async def watch(self, session_id: uuid.UUID) -> None:
        channel = self._session_channel(session_id)
        self._watched[channel] = session_id
        await self._subscribe(channel)

    def unwatch(self, session_id: uuid.UUID) -> None:
        channel = self._session_channel(session_id)
        self._watched.pop(channel, None)
        self._confirmed.discard(channel)
        task = asyncio.get_running_loop().create_task(self._command("unsubscribe", channel))
        task.add_done_callback(_ignore_result)

    async def _command(self, name: str, channel: str) -> None:
        async with self._commands:
            pubsub = self._pubsub
            if pubsub is None or not self.connected:
                return  # the reader subscribes what is watched when it reconnects
            try:
                await getattr(pubsub, name)(channel)
            except Exception:
                self._log_error(name)

    # Publishing ---------------------------------------------------------------------------------

    def publish(self, session_id: uuid.UUID, text: str, *, counted: Counted | None = None, self_listens: bool = False) -> None:
        """Queue a frame for the processes watching the session; `flush()` sends what is queued."""
        payload = liveness.WORKER_ID.encode() + b"\n" + text.encode("utf-8", "surrogatepass")
        self._batch.append((self._session_channel(session_id), payload, counted, self_listens))

    def flush(self) -> None:
        if self._batch and (self._sending is None or self._sending.done()):
            batch, self._batch = self._batch, []
            self._sending = asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[tuple[str, bytes, Counted | None, bool]]) -> None:
        while batch:
            started = time.perf_counter()
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for channel, payload, _, _ in batch:
                        pipe.publish(channel, payload)
                    listeners = await pipe.execute()
                metrics.BUS_PUBLISH_SECONDS.observe(time.perf_counter() - started)
                metrics.BUS_FRAMES.labels("out").inc(len(batch))
                for (_, _, counted, self_listens), count in zip(batch, listeners, strict=True):
                    if counted is not None and int(count) - (1 if self_listens else 0) <= 0:
                        counted.remote = False  # nobody else listens; a newcomer asks for the text so far
            except Exception:
                metrics.BUS_FRAMES.labels("dropped").inc(len(batch))
                metrics.FRAMES_DROPPED.labels("bus").inc(len(batch))
                self._log_error("publish")
            # What queued meanwhile leaves in the next pipeline, in order.
            batch, self._batch = self._batch, []

    async def send_to_worker(self, worker_id: str, message: dict[str, Any]) -> bool:
        """Queued with the frames, in one order: an answer never overtakes the deltas sent before it."""
        self._batch.append((f"{self.prefix}:w:{worker_id}", json.dumps(message).encode(), None, False))
        self.flush()
        return True

    async def ping(self) -> bool:
        return bool(await self.client.ping()) and self.connected

    async def _probe_forever(self) -> None:
        """Time the way frames take: a probe to this process's own channel, queued with the frames, back through Redis."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            if self.connected:
                await self.send_to_worker(liveness.WORKER_ID, {"op": "probe", "at": time.monotonic()})

    async def drain(self, timeout: float) -> None:
        """Wait (up to `timeout`) until everything queued has been handed to Redis."""
        deadline = time.monotonic() + timeout
        while (self._batch or (self._sending is not None and not self._sending.done())) and time.monotonic() < deadline:
            self.flush()
            await asyncio.sleep(0.01)

    # Receiving --------------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._read_once()
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception:
                self._log_error("receive")
            self.connected = False
            self._confirmed.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _read_once(self) -> None:
        pubsub = self.client.pubsub()
        try:
            async with self._commands:
                await pubsub.subscribe(self.worker_channel, *self._watched)
                self._pubsub = pubsub
                self.connected = True
            reconnect, self._ever_connected = self._ever_connected, True
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                kind = message["type"]
                if kind == "message":
                    self._on_message(message["channel"], message["data"])
                elif kind == "subscribe":
                    channel = message["channel"].decode()
                    self._confirmed.add(channel)
                    for future in self._waiters.pop(channel, []):
                        if not future.done():
                            future.set_result(None)
                    if reconnect and channel == self.worker_channel and self.listener is not None:
                        # Frames published while the link was down are lost: every socket here starts over.
                        metrics.BUS_RECONNECTS.inc()
                        self.listener.bus_reconnected()
        finally:
            self._pubsub = None
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _on_message(self, channel: bytes, data: bytes) -> None:
        listener = self.listener
        if listener is None:
            return
        if channel.decode() == self.worker_channel:
            try:
                request = json.loads(data)
            except ValueError:
                return
            if not isinstance(request, dict):
                return
            if request.get("op") == "probe" and isinstance(request.get("at"), float):
                metrics.BUS_ROUNDTRIP_SECONDS.observe(time.monotonic() - request["at"])
                return
            task = asyncio.get_running_loop().create_task(listener.control_from_bus(request))
            task.add_done_callback(_ignore_result)
            return
        origin, _, text = data.partition(b"\n")
        if origin == liveness.WORKER_ID.encode():
            return  # our own frame: the sockets here had it already
        session_id = self._watched.get(channel.decode())
        if session_id is not None:
            metrics.BUS_FRAMES.labels("in").inc()
            listener.frame_from_bus(session_id, text.decode("utf-8", "surrogatepass"))

    def _log_error(self, what: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 5:
            self._last_error_log = now
            logger.warning("Redis %s failed", what, exc_info=True)

    def stop(self) -> None:
        for task in (self._reader, self._prober):
            if task is not None:
                task.cancel()

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        with contextlib.suppress(Exception):
            await self.client.aclose()


def _ignore_result(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("Background bus call failed", exc_info=task.exception())


def make_bus(redis_url: str, prefix: str) -> LocalBus | RedisBus:
    return RedisBus(redis_url, prefix) if redis_url else LocalBus()
