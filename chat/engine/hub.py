"""Fan-out in the process: every frame of a session, encoded once, written to each of its sockets here.

No channel layer sits between a reply and the sockets of its own process: the hub knows the
sockets (`Sink`) of each session and writes to them directly, in one task, in one order. Frames
for sockets in other processes go through the bus once per frame (chat.engine.bus).

Deltas are coalesced on a process-wide tick. A reply appends the model's pieces to its run
and marks itself dirty; the hub turns each dirty run's new text into one `message.delta`
frame at most once per STREAM_WINDOW (a few tens of milliseconds), all runs in the same tick.
An idle process sends the first piece at once; a busy one, or a fast model, gets several
pieces per frame, and the ticks stretch when the loop falls behind, which coalesces more.
A socket whose connection cannot take more (over HOLD_ABOVE bytes wait in its buffer) holds its
frames and joins the deltas of a reply into one until the buffer drains.

A tick of hundreds of replies is tens of milliseconds of work; done in one go it would hold back
every timer of the loop meanwhile (the models' next pieces, heartbeats), and each reply's pace
would slip by that much every tick. So the hub stages and writes in slices of at most SLICE
seconds and lets the loop run between them. Everything still leaves through one queue, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from django.conf import settings

from chat import events
from chatproject import metrics

logger = logging.getLogger(__name__)

_DELTA_PREFIX = '{"type":"message.delta",'
_DELETED_PREFIX = '{"type":"session.deleted",'
_DELTA_OVERHEAD = 100  # the JSON around a held delta's text (type, message id, offset)
SLICE = 0.002  # seconds of staging or writing before the hub lets the loop run other callbacks
_CHECK_EVERY = 32  # items between looks at the clock


class Run(Protocol):
    """What the hub needs of a streaming reply (chat.engine.replies.ReplyRun)."""

    message_id: uuid.UUID
    session_id: uuid.UUID
    remote: bool
    sent_offset: int

    def take(self) -> tuple[int, str] | None: ...


class Bus(Protocol):
    shared: bool

    async def watch(self, session_id: uuid.UUID) -> None: ...

    def unwatch(self, session_id: uuid.UUID) -> None: ...

    def publish(self, session_id: uuid.UUID, text: str, *, counted: Any = None, self_listens: bool = False) -> None: ...

    def flush(self) -> None: ...


_ids = itertools.count(1)


class Out:
    """A frame on its way to the sockets of a session: its text, and its bytes on the wire, made once for all of them."""

    __slots__ = ("_frame", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._frame: bytes | None = None

    def frame(self, build: Callable[[bytes], bytes]) -> bytes:
        if self._frame is None:
            self._frame = build(self.text.encode("utf-8", "surrogatepass"))
        return self._frame


class Wire(Protocol):
    """A socket's direct way onto its connection (chat.ws.wire); `write` False means: use `send`."""

    def write(self, frame: bytes) -> bool: ...

    def backlog(self) -> int: ...


# A socket with more than this waiting in its connection's buffer holds its frames (joining deltas)
# until the buffer is below half of it; checked again every BACKLOG_POLL seconds meanwhile.
HOLD_ABOVE = 64 * 1024
BACKLOG_POLL = 0.05


class Sink:
    """One socket's way out. Frames wait here until the socket is accepted, or while its connection is full."""

    def __init__(
        self, send: Callable[[str], Awaitable[None]], *, on_resync: Callable[[], None] | None = None,
        wire: Wire | None = None, build: Callable[[bytes], bytes] | None = None,
        on_overflow: Callable[[], None] | None = None, max_unsent: int = 0,
        closer: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.id = next(_ids)
        self._send = send
        self.wire = wire
        self._build = build
        self.on_resync = on_resync
        # Called once when the output this socket has not taken passes `max_unsent` bytes (0: no limit).
        self.on_overflow = on_overflow
        self.max_unsent = max_unsent
        # Closes the socket so that its client reconnects (a draining process, chat.engine.process).
        self.closer = closer
        self.held_size = 0  # characters held (about bytes: frames are mostly ASCII JSON)
        self.open = False  # until session.ready went out, frames wait
        self.closed = False
        self.paused = False  # the connection's buffer is full (see ChatConsumer's producer)
        self.held: list[str | list[Any]] = []  # frame texts, or [message_id, offset, [pieces]] for joined deltas
        self.wake: Callable[[Sink], None] | None = None

    async def write(self, out: Out) -> None:
        if self.closed:
            return
        if self.open and not self.paused and not self.held:
            if self.wire is None or self.wire.backlog() <= HOLD_ABOVE:
                await self._put(out)
                return
            self.pause()
        self._hold(out.text)
        if self.open and not self.paused:
            await self.release()

    async def _put(self, out: Out) -> None:
        # Onto the wire directly when the socket has one; through the socket's own `send` otherwise,
        # and for session.deleted, which the socket acts on (it closes after it).
        wire = self.wire
        if wire is not None and self._build is not None and not out.text.startswith(_DELETED_PREFIX) and wire.write(out.frame(self._build)):
            return
        await self._send(out.text)

    def _hold(self, text: str) -> None:
        if self.paused and text.startswith(_DELTA_PREFIX):
            frame = json.loads(text)
            last = self.held[-1] if self.held else None
            self.held_size += len(frame["delta"])
            if isinstance(last, list) and last[0] == frame["message_id"] and last[1] + sum(map(len, last[2])) == frame["offset"]:
                last[2].append(frame["delta"])
                metrics.FRAMES_COALESCED.inc()
            else:
                self.held_size += _DELTA_OVERHEAD
                self.held.append([frame["message_id"], frame["offset"], [frame["delta"]]])
        else:
            self.held_size += len(text)
            self.held.append(text)
        if self.max_unsent and self.held_size + (self.wire.backlog() if self.wire is not None else 0) > self.max_unsent:
            self.overflow()

    def overflow(self) -> None:
        """Too much output waits for this socket: drop it all and let the socket be closed (it resyncs on reconnect)."""
        if self.closed:
            return
        self.closed = True
        metrics.FRAMES_DROPPED.labels("too_far_behind").inc(len(self.held))
        self.held.clear()
        self.held_size = 0
        metrics.SOCKETS_TOO_FAR_BEHIND.inc()
        if self.on_overflow is not None:
            self.on_overflow()

    async def release(self) -> None:
        """Write what was held (the socket opened, or its connection drained)."""
        while self.held and not self.paused and not self.closed:
            if self.wire is not None and self.wire.backlog() > HOLD_ABOVE:
                self.pause()
                return
            item = self.held.pop(0)
            if isinstance(item, list):
                item = events.encode_delta(item[0], item[1], "".join(item[2]))
            self.held_size = max(0, self.held_size - len(item))  # a joined delta's frame is about what was counted
            await self._put(Out(item))

    def pause(self) -> None:
        """The connection is full: hold frames until it drained (polled, see HOLD_ABOVE)."""
        if not self.paused:
            self.paused = True
            asyncio.get_running_loop().call_later(BACKLOG_POLL, self._poll)

    def _poll(self) -> None:
        if self.closed:
            return
        if self.wire is not None and self.wire.backlog() > HOLD_ABOVE // 2:
            asyncio.get_running_loop().call_later(BACKLOG_POLL, self._poll)
            return
        self.resume()

    def resume(self) -> None:
        self.paused = False
        if self.held and self.wake is not None:
            self.wake(self)


class Hub:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.window = settings.CHAT["STREAM_WINDOW"]
        self.window_max = max(self.window, settings.CHAT["STREAM_WINDOW_MAX"])
        self.frames_per_second = settings.CHAT["STREAM_FRAMES_PER_SECOND"]
        self.sessions: dict[uuid.UUID, set[Sink]] = {}
        self.sinks: dict[int, Sink] = {}
        self._dirty: dict[Run, None] = {}
        self._out: deque[tuple[Sink, Out | None]] = deque()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._next_tick = 0.0
        self._task = self._loop.create_task(self._run())

    # Sockets ------------------------------------------------------------------------------------

    async def join(self, session_id: uuid.UUID, sink: Sink) -> None:
        """From now on the sink gets every frame of the session (held until `open`)."""
        sink.wake = self._release_soon
        self.sinks[sink.id] = sink
        sinks = self.sessions.setdefault(session_id, set())
        first = not sinks
        sinks.add(sink)
        if first:
            await self.bus.watch(session_id)

    def leave(self, session_id: uuid.UUID, sink: Sink) -> None:
        sink.closed = True
        self.sinks.pop(sink.id, None)
        sinks = self.sessions.get(session_id)
        if sinks is None:
            return
        sinks.discard(sink)
        if not sinks:
            del self.sessions[session_id]
            self.bus.unwatch(session_id)

    def open(self, sink: Sink) -> None:
        """The socket is accepted and has its snapshot: release what waited, in order."""
        sink.open = True
        self._release_soon(sink)

    def _release_soon(self, sink: Sink) -> None:
        self._out.append((sink, None))
        self._wake.set()

    def has_sockets(self, session_id: uuid.UUID) -> bool:
        return session_id in self.sessions

    # Frames ---------------------------------------------------------------------------------------

    def publish(self, session_id: uuid.UUID, frame: dict[str, Any]) -> None:
        """A frame for every socket of the session, here and in other processes."""
        text = events.encode(frame)
        self.deliver(session_id, text)
        if self.bus.shared:
            self.bus.publish(session_id, text, self_listens=session_id in self.sessions)
            self.bus.flush()

    def deliver(self, session_id: uuid.UUID, text: str) -> None:
        """A frame for the sockets of the session in this process only."""
        sinks = self.sessions.get(session_id)
        if sinks:
            out = Out(text)
            self._out.extend((sink, out) for sink in sinks)
            self._wake.set()

    def send_to(self, sink: Sink, text: str) -> None:
        """A frame for one socket, in order with everything else it gets."""
        self._out.append((sink, Out(text)))
        self._wake.set()

    def frame_from_bus(self, session_id: uuid.UUID, text: str) -> None:
        self.deliver(session_id, text)

    # Deltas -----------------------------------------------------------------------------------

    def mark_dirty(self, run: Run) -> None:
        if run.sent_offset == 0:
            # A reply's first piece goes out at once: the wait for the first words is what people notice.
            self._dirty.pop(run, None)
            self._stage(run)
            self.bus.flush()
            return
        if run not in self._dirty:
            self._dirty[run] = None
            self._wake.set()

    def flush_run(self, run: Run) -> None:
        """Send the run's text now (its end): the frames that follow must find it sent."""
        self._dirty.pop(run, None)
        self._stage(run)
        self.bus.flush()

    def _stage(self, run: Run) -> None:
        taken = run.take()
        if taken is None:
            return
        offset, delta = taken
        text = events.encode_delta(str(run.message_id), offset, delta)
        metrics.DELTA_FRAMES.inc()
        sinks = self.sessions.get(run.session_id)
        if sinks:
            out = Out(text)
            self._out.extend((sink, out) for sink in sinks)
            self._wake.set()
        if run.remote and self.bus.shared:
            self.bus.publish(run.session_id, text, counted=run, self_listens=bool(sinks))

    async def _tick(self) -> None:
        runs, self._dirty = self._dirty, {}
        # Many replies at once: a longer window, so frames (the cost per socket) stay about
        # STREAM_FRAMES_PER_SECOND in all however many pieces the models send.
        window = min(self.window_max, max(self.window, len(runs) / self.frames_per_second))
        loop = self._loop
        self._next_tick = loop.time() + window
        started = loop.time()
        for i, run in enumerate(runs, 1):
            self._stage(run)  # a run that ended meanwhile was flushed already: nothing left to take
            if i % _CHECK_EVERY == 0 and loop.time() - started >= SLICE:
                self.bus.flush()
                await asyncio.sleep(0)
                started = loop.time()
        self.bus.flush()

    async def _run(self) -> None:
        loop = self._loop
        while True:
            try:
                if self._dirty and loop.time() >= self._next_tick:
                    await self._tick()
                if self._out:
                    await self._drain()
                    continue
                self._wake.clear()
                if self._dirty:
                    timer = loop.call_at(self._next_tick, self._wake.set)
                    await self._wake.wait()
                    timer.cancel()
                else:
                    await self._wake.wait()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("The hub failed to send; going on")

    async def _drain(self) -> None:
        # What is queued now, not what arrives while it is written (between slices): the tick must
        # get its turn however much keeps arriving.
        out, loop = self._out, self._loop
        started, count = loop.time(), 0
        for _ in range(len(out)):
            if not out:
                break
            sink, item = out.popleft()
            if sink.closed:
                continue
            try:
                if item is None:
                    await sink.release()
                else:
                    await sink.write(item)
            except Exception:
                metrics.FRAMES_DROPPED.labels("write_failed").inc()
                logger.warning("Writing to socket %s failed", sink.id, exc_info=True)
            count += 1
            if count % _CHECK_EVERY == 0 and loop.time() - started >= SLICE:
                await asyncio.sleep(0)
                started = loop.time()

    def resync_all(self) -> None:
        """The link to other processes was lost for a while: every socket here gets a fresh snapshot."""
        for sink in list(self.sinks.values()):
            if sink.on_resync is not None:
                sink.on_resync()

    async def settle(self, timeout: float) -> None:
        """Wait (up to `timeout` seconds) until what was handed to the hub so far is written to the sockets (or held by them)."""
        deadline = self._loop.time() + timeout
        await asyncio.sleep(0)  # a write in progress completes
        while (self._out or self._dirty) and self._loop.time() < deadline:
            await asyncio.sleep(0.01)

    async def close_sockets(self) -> int:
        """Close every socket of this process that has a closer, all at once; how many."""
        closers = [sink.closer for sink in list(self.sinks.values()) if sink.closer is not None and not sink.closed]
        for result in await asyncio.gather(*(closer() for closer in closers), return_exceptions=True):
            if isinstance(result, Exception):
                logger.warning("Closing a socket failed", exc_info=result)
        return len(closers)

    def stop(self) -> None:
        self._task.cancel()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
