"""Server processes and their liveness.

Each process has an id (`WORKER_ID`) stamped on the replies it generates, a row in `Worker`
with a heartbeat, and its own channel on the layer (for cancel and catch-up requests from
sockets held by other processes). A reply whose process is dead is marked `interrupted`.

A process is dead when its heartbeat is older than WORKER_TIMEOUT, or, on this host, as soon
as its pid is gone or is this process's own (so a restart right after a crash, even in a
container that comes back with the same pid, finds its replies at once). Processes that share
a hostname must share a pid namespace too (not containers with the host's network but their
own pids): there, use distinct hostnames.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from datetime import timedelta

from channels.db import database_sync_to_async
from django.conf import settings
from django.db.models.functions import Now

logger = logging.getLogger(__name__)

WORKER_ID = f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
HOSTNAME = socket.gethostname()[:255]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_worker_ids(worker_ids: set[str]) -> set[str]:
    """Which of these worker ids belong to processes that are gone.

    Heartbeats are written and compared in the database's clock, so hosts' clocks may differ.
    """
    from chat.models import Worker

    worker_ids = set(worker_ids)
    dead = {w for w in worker_ids if not w}  # a streaming reply with no worker cannot finish
    others = worker_ids - {WORKER_ID} - dead
    if not others:
        return dead
    cutoff = Now() - timedelta(seconds=settings.CHAT["WORKER_TIMEOUT"])
    fresh = {row[0]: row for row in Worker.objects.filter(pk__in=others, heartbeat_at__gte=cutoff).values_list("pk", "hostname", "pid")}
    for worker_id in others:
        row = fresh.get(worker_id)
        if row is None or (row[1] == HOSTNAME and (row[2] == os.getpid() or not _pid_alive(row[2]))):
            # Our host and our pid, yet not our id: an earlier life of this process slot (a
            # container restarted with the same hostname and pid 1). Its replies are orphans.
            dead.add(worker_id)
    return dead


def heartbeat(channel: str = "") -> None:
    from chat.models import Worker

    defaults = {"hostname": HOSTNAME, "pid": os.getpid(), "heartbeat_at": Now()}
    if channel:
        defaults["channel"] = channel
    Worker.objects.update_or_create(pk=WORKER_ID, defaults=defaults)


def forget_dead_workers() -> None:
    from chat.models import Worker

    Worker.objects.filter(heartbeat_at__lt=Now() - timedelta(seconds=max(settings.CHAT["WORKER_TIMEOUT"] * 10, 600))).delete()


def forget_self() -> None:
    from chat.models import Worker

    Worker.objects.filter(pk=WORKER_ID).delete()


def worker_channel(worker_id: str) -> str | None:
    from chat.models import Worker

    return Worker.objects.filter(pk=worker_id).values_list("channel", flat=True).first() or None


def startup_sweep() -> None:
    """At server start: mark the replies of dead processes `interrupted`."""
    from chat.services import replies_mark_interrupted

    try:
        marked = replies_mark_interrupted()
        if marked:
            logger.info("Marked %d interrupted replies at startup", len(marked))
    except Exception:  # the database may not be migrated yet; the socket-open sweep covers it later
        logger.warning("Startup sweep skipped", exc_info=True)


class _Process:
    """The per-process background work: heartbeat, sweep, and the worker channel listener."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.channel: str | None = None
        self.tasks: list[asyncio.Task] = []
        self._lock: asyncio.Lock | None = None
        self._shutdown_hooked = False

    def note_loop(self) -> None:
        """Remember the server's running loop (cheap; called on every HTTP request)."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            self.loop = loop
            self.channel = None
            self._lock = None
            self.tasks = []  # the old loop's tasks end themselves (see _heartbeat_loop)

    def running_here(self) -> bool:
        try:
            return self.loop is asyncio.get_running_loop() and not self.loop.is_closed()
        except RuntimeError:
            return False

    async def ensure_started(self, *, listen: bool = True) -> None:
        """Start the background tasks on the running loop once (again after a loop change, as in tests).

        `listen=False` outside a server (the private loop of chat.streaming): a channel layer
        receives on one event loop at a time, and that loop belongs to the server's sockets.
        """
        loop = asyncio.get_running_loop()
        if self.loop is loop and self.tasks and not self.tasks[0].done():
            return
        if self._lock is None or self.loop is not loop:
            self._lock = asyncio.Lock()
            self.loop = loop
            self.channel = None
            self.tasks = []
        async with self._lock:
            if self.tasks and not self.tasks[0].done() and self.loop is loop:
                return
            from channels.layers import get_channel_layer

            layer = get_channel_layer()
            # Default prefix: channels_redis receives all of a process's channels through one key per prefix,
            # and a second prefix would hold the shared receive lock on a key the sockets never use.
            channel = await layer.new_channel() if layer is not None and listen else ""
            await database_sync_to_async(heartbeat)(channel)
            self.channel = channel
            self.tasks = [loop.create_task(self._heartbeat_loop())]
            if listen:
                self._hook_server_shutdown()
            if layer is not None and listen:
                self.tasks.append(loop.create_task(self._listen(layer, channel)))

    async def _heartbeat_loop(self) -> None:
        from chat.services import replies_mark_interrupted

        beats = 0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(settings.CHAT["WORKER_HEARTBEAT"])
            if self.loop is not loop:
                return  # the process serves from another loop now; that loop has its own heartbeat
            try:
                await database_sync_to_async(heartbeat)(self.channel or "")
                beats += 1
                if beats % 3 == 0:
                    await database_sync_to_async(replies_mark_interrupted)()
                    await self._resume_stalled_turns()
                if beats % 60 == 0:
                    await database_sync_to_async(forget_dead_workers)()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("Heartbeat failed", exc_info=True)

    def _hook_server_shutdown(self) -> None:
        """Under daphne (Twisted on asyncio): on SIGTERM, end this process's replies before it exits."""
        if self._shutdown_hooked:
            return
        try:
            from twisted.internet import reactor
        except ImportError:
            return
        if not getattr(reactor, "running", False):
            return
        reactor.addSystemEventTrigger("before", "shutdown", self._on_server_shutdown)
        self._shutdown_hooked = True

    def _on_server_shutdown(self):  # type: ignore[no-untyped-def]
        from twisted.internet.defer import Deferred

        return Deferred.fromFuture(asyncio.ensure_future(self.shutdown(), loop=self.loop))

    async def shutdown(self) -> None:
        """Stop replies (their text is saved, status `interrupted`) and leave the list of live processes."""
        from chat import streaming

        try:
            await asyncio.wait_for(streaming.shutdown(), timeout=10)
        except Exception:
            logger.warning("Replies did not stop cleanly", exc_info=True)
        for task in self.tasks:
            task.cancel()
        try:
            await database_sync_to_async(forget_self)()
        except Exception:
            logger.warning("Could not remove this process from the worker list", exc_info=True)

    async def _resume_stalled_turns(self) -> None:
        """Pick up turns a dead process left half-way: lost tool calls, unmoved calls, running plans."""
        from chat import agentic, streaming, turns

        for call_id, reply_id in await database_sync_to_async(agentic.lost_calls)():
            step = await database_sync_to_async(agentic.tool_call_fail)(
                call_id=call_id, reason="The server stopped while this tool ran; it may or may not have finished."
            )
            if step.action in ("run", "continue"):
                streaming.spawn(turns.advance(reply_id, step))
        for reply_id in await database_sync_to_async(agentic.stalled_replies)():
            streaming.spawn(turns.advance(reply_id))
        for plan_id in await database_sync_to_async(agentic.stalled_plans)():
            streaming.spawn(turns.run_plan(plan_id))

    async def _listen(self, layer, channel: str) -> None:  # type: ignore[no-untyped-def]
        from chat import streaming

        while True:
            try:
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("Worker channel receive failed", exc_info=True)
                await asyncio.sleep(1)
                continue
            try:
                await streaming.handle_worker_message(message)
            except Exception:
                logger.exception("Worker message failed: %r", message.get("type"))


process = _Process()
