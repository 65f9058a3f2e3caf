"""The engine of one server process: its event loop, its replies, its heartbeat and sweeps.

`engine` is the only object that owns the loop. It is bound to the running loop once
(`await engine.start()`, from the first request or socket), and everything it makes lives on
that loop: the hub, the bus, the replies, the heartbeat. Outside a server (a management command,
a sync test) effects are carried out on a private loop in a thread of its own.

Steps run through `engine.write` / `engine.read` (chat.engine.db); what they committed, frames
and replies to start, is dispatched here, on the loop, in commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as redis
from django.conf import settings
from django.db import InterfaceError, OperationalError

from chat.engine import db, server
from chat.engine.batch import GroupCommit
from chat.engine.bus import LocalBus, RedisBus, make_bus
from chat.engine.drive import Driver
from chat.engine.hub import Hub
from chat.engine.replies import Replies
from chat.turn import liveness, outbox, turns
from chat.turn import replies as turn_replies
from chat.turn.turns import Queued, Turn, TurnRequest, turn_start_many
from chatproject import logs, metrics

logger = logging.getLogger(__name__)

DRAIN_POLL = 0.05  # seconds between looks at what a drain waits for
DRAIN_SETTLE = 5.0  # seconds a drain waits for the frames already queued before it closes the sockets
DRAIN_CLOSE_WAIT = 2.0  # seconds it then waits for the clients to answer the close


class _Running:
    """What the engine made on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, bus: LocalBus | RedisBus, hub: Hub, replies: Replies, driver: Driver) -> None:
        self.loop = loop
        self.bus = bus
        self.hub = hub
        self.replies = replies
        self.driver = driver
        self.tasks: list[asyncio.Task] = []
        self.background: set[asyncio.Task] = set()
        self.starts: GroupCommit[TurnRequest, Turn | Queued] | None = None
        self.finishes: GroupCommit[turn_replies.FinishRequest, turn_replies.Finished] | None = None

        # The work of turns (replies, their tools and continuations, plan steps): what a drain waits for.
        self.turns: set[asyncio.Task] = set()
        self.starting = 0  # user messages on their way to a committed turn

    def abandon(self) -> None:
        """The engine moved to another loop (each test has its own): stop what was left running here. On this loop."""
        for task in [*self.tasks, *self.background]:
            task.cancel()
        self.close_batches()
        self.hub.stop()
        self.bus.stop()

    def close_batches(self) -> None:
        for batches in (self.starts, self.finishes):
            if batches is not None:
                batches.close()


class Engine:
    def __init__(self) -> None:
        self._running: _Running | None = None
        self._starting: asyncio.Future[_Running] | None = None
        self._private_loop: asyncio.AbstractEventLoop | None = None
        self._private_lock = threading.Lock()
        self._shutdown_hooked = False
        # Effects committed before the server's loop existed (the startup sweep), carried out on it.
        self._deferred: list[outbox.Effect] = []
        outbox.install(self._effects_from_elsewhere)

        # While draining (SIGTERM under daphne), this process takes no new turns and no new sockets.
        self.draining = False
        self.http_requests = 0  # HTTP requests in flight (chatproject.asgi counts them): a drain lets them end
        self._drain: asyncio.Task | None = None
        self._cut = asyncio.Event()  # a second SIGTERM: stop draining now

    # The loop ------------------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        running = self._running
        if running is None or running.loop.is_closed():
            return None
        return running.loop

    @property
    def hub(self) -> Hub:
        return self._here().hub

    @property
    def replies(self) -> Replies:
        return self._here().replies

    @property
    def bus(self) -> LocalBus | RedisBus:
        return self._here().bus

    def _here(self) -> _Running:
        running = self._running
        if running is None or running.loop is not asyncio.get_running_loop():
            raise RuntimeError("The engine is not started on this event loop (await engine.start() first).")
        return running

    async def start(self) -> _Running:
        """Bind to the running loop (once; again on a new loop, as each test has its own) and start the background work."""
        loop = asyncio.get_running_loop()
        running = self._running
        if running is not None and running.loop is loop:
            return running
        starting = self._starting
        if starting is not None and starting.get_loop() is loop:
            return await asyncio.shield(starting)
        self._starting = starting = loop.create_future()
        try:
            running = await self._start_on(loop)
        except BaseException as exc:
            self._starting = None
            starting.set_exception(exc)
            starting.exception()  # retrieved: a later caller retries
            raise
        starting.set_result(running)
        return running

    async def _start_on(self, loop: asyncio.AbstractEventLoop) -> _Running:
        old = self._running
        if old is not None and old.loop is not loop and old.loop.is_running() and not old.loop.is_closed():
            old.loop.call_soon_threadsafe(old.abandon)
        bus = make_bus(settings.REDIS_URL, settings.CHAT["BUS_PREFIX"])
        hub = Hub(bus)
        replies = Replies(hub, self)
        running = _Running(loop, bus, hub, replies, Driver(replies, self))
        self.draining, self._drain, self._cut = False, None, asyncio.Event()
        metrics.DRAINING.set(0)
        writers = db.pools()[0].threads
        running.starts = GroupCommit(self, turn_start_many, writers)
        running.finishes = GroupCommit(self, turn_replies.reply_finish_many, writers)
        self._running = running
        running.tasks.append(loop.create_task(self._heartbeat(running)))
        running.tasks.append(loop.create_task(self._checkpoints(running)))
        if loop is not self._private_loop:
            self._hook_server_shutdown()
        await bus.start(_BusListener(self, running))
        try:
            # This process is in the worker list before its first reply exists.
            await self.write(liveness.heartbeat)
        except Exception:  # the database may be down; the heartbeat retries
            logger.warning("First heartbeat failed", exc_info=True)
        if loop is not self._private_loop and self._deferred:
            deferred, self._deferred = self._deferred, []
            self.dispatch(deferred)
        return running

    def _private(self) -> asyncio.AbstractEventLoop:
        """A loop of our own, for effects from code that runs outside a server."""
        with self._private_lock:
            if self._private_loop is None or self._private_loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="engine-loop", daemon=True).start()
                self._private_loop = loop
            return self._private_loop

    def _target_loop(self) -> asyncio.AbstractEventLoop:
        loop = self.loop
        if loop is not None and loop.is_running():
            return loop
        return self._private()

    # Steps and their effects ------------------------------------------------------------------

    async def write(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run a step that writes on a database thread; dispatch what it committed; return its value."""
        return await self._step(db.pools()[0], fn, args, kwargs)

    async def read(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run a step that only reads (or marks what is certainly stale) on a reading thread."""
        return await self._step(db.pools()[1], fn, args, kwargs)

    async def _step(self, pool: db.DbPool, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        result = await pool.run(fn, *args, **kwargs)
        if result.effects:
            if fn is not turn_replies.reply_finish_many:  # a reply's own end counts its interruption in `shutdown`
                _count_interrupted_elsewhere(result.effects)
            self.dispatch(result.effects)
        if result.error is not None:
            raise result.error
        return result.value

    def dispatch(self, effects: list[outbox.Effect]) -> None:
        """Carry out committed effects, in order, on the engine's loop."""
        running = self._running
        if running is None or running.loop is not _current_loop():
            self._effects_from_elsewhere(effects)
            return
        for effect in effects:
            if isinstance(effect, outbox.Frame):
                running.hub.publish(effect.session_id, effect.frame)
            elif isinstance(effect, outbox.StartReply):
                session_id = getattr(effect.context, "session_id", None)
                self._spawn_turn(running, running.driver.reply(effect.message_id, effect.context), message_id=effect.message_id, session_id=session_id)
            elif isinstance(effect, outbox.Drive):
                self._spawn_turn(running, running.driver.advance(effect.reply_id, effect.step), message_id=effect.reply_id)
            elif isinstance(effect, outbox.RunPlan):
                self._spawn_turn(running, running.driver.run_plan(effect.plan_id), plan_id=effect.plan_id)
            elif isinstance(effect, outbox.CancelReply):
                self.spawn(running.replies.request_cancel(effect.message_id, effect.worker_id or None))
            elif isinstance(effect, outbox.QueueNext) and not self.draining:
                # A draining process starts no new turn: the queue is left to the processes that stay
                # (their sweep answers it).
                self.spawn(self.queue_next(effect.session_id))

    def _effects_from_elsewhere(self, effects: list[outbox.Effect]) -> None:
        """Effects committed outside the engine's loop (REST views, the admin, commands): handed over without waiting."""
        _count_interrupted_elsewhere(effects)
        loop = self._target_loop()

        def carry_out() -> None:
            running = self._running
            if running is not None and running.loop is loop:
                self.dispatch(effects)
            else:
                self._keep(loop, loop.create_task(self._dispatch_when_started(effects), context=contextvars.Context()))

        loop.call_soon_threadsafe(carry_out, context=contextvars.Context())

    async def _dispatch_when_started(self, effects: list[outbox.Effect]) -> None:
        await self.start()
        self.dispatch(effects)

    def defer(self, effects: list[outbox.Effect]) -> None:
        """Effects of sync code that runs before the server's loop (the startup sweep): carried out once the engine starts
        on it, so a reply they start (a queued message answered) is a task of the server, not of a private loop."""
        _count_interrupted_elsewhere(effects)
        self._deferred.extend(effects)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine as a task of the process (not of the request or socket that caused it), kept until it ends.

        The task starts with an empty context: it belongs to the process, and must not inherit
        asgiref's "inside the sync thread" marker of whatever caused it.
        """
        running = self._running
        if running is not None and running.loop is _current_loop():
            self._keep(running.loop, running.loop.create_task(coro, context=contextvars.Context()))
            return
        loop = self._target_loop()
        loop.call_soon_threadsafe(lambda: self._keep(loop, loop.create_task(coro, context=contextvars.Context())), context=contextvars.Context())

    def _spawn_turn(self, running: _Running, coro: Coroutine[Any, Any, Any], **ids: Any) -> None:
        """Spawn the work of a turn: kept like any task of the process, waited for by a drain, its log lines marked with `ids`."""
        context = contextvars.Context()
        context.run(logs.bind, **ids)
        task = running.loop.create_task(coro, context=context)
        self._keep(running.loop, task)
        running.turns.add(task)
        task.add_done_callback(running.turns.discard)

    def _keep(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task) -> None:
        running = self._running
        holder = running.background if running is not None and running.loop is loop else _orphans
        holder.add(task)
        task.add_done_callback(lambda t: (holder.discard(t), _log_failure(t)))

    async def start_turn(self, request: TurnRequest) -> Turn | Queued:
        """Start a user's turn, together with whatever other turns wait for the database (group commit)."""
        running = self._here()
        assert running.starts is not None
        running.starting += 1
        try:
            return await running.starts.submit(request)
        finally:
            running.starting -= 1

    async def finish_reply(self, request: turn_replies.FinishRequest) -> turn_replies.Finished:
        """Store a reply's end, together with whatever other ends wait for the database (group commit)."""
        finishes = self._here().finishes
        assert finishes is not None
        started = time.perf_counter()
        try:
            finished = await finishes.submit(request)
        except (OperationalError, InterfaceError):
            metrics.FINAL_SAVE_FAILURES.labels("database_away").inc()
            raise
        except Exception:
            metrics.FINAL_SAVE_FAILURES.labels("error").inc()
            raise
        metrics.FINAL_SAVE_SECONDS.observe(time.perf_counter() - started)
        return finished

    async def queue_next(self, session_id: uuid.UUID) -> None:
        """Answer the session's first queued message if its turn is over (the step decides under the session lock)."""
        await self.write(turns.queue_next, session_id=session_id)

    async def send_to_worker(self, worker_id: str, message: dict[str, Any]) -> bool:
        return await self._here().bus.send_to_worker(worker_id, message)

    def wait_sent(self, timeout: float = 5.0) -> None:
        """From sync code outside the loop: wait until the effects handed over so far were carried out and their
        frames left the process (a management command that exits right after)."""
        loop = self.loop or self._private_loop
        if loop is None or loop.is_closed() or not loop.is_running() or loop is _current_loop():
            return

        async def sent() -> None:
            running = await self.start()
            await asyncio.sleep(0)  # after the dispatches queued before this
            await running.bus.drain(timeout)

        try:
            asyncio.run_coroutine_threadsafe(sent(), loop).result(timeout + 1)
        except Exception:
            logger.warning("Frames may not all have left before exit", exc_info=True)

    # Background work ----------------------------------------------------------------------------

    async def sweep(self) -> None:
        """What every third heartbeat does: end the replies of dead processes, pick up turns they left half-way."""
        running = await self.start()
        await self.write(turn_replies.replies_mark_interrupted, running_here=running.replies.running())
        if self.draining:
            return  # what dead processes left is for the processes that stay
        for work in await running.driver.resume_stalled():
            self._spawn_turn(running, work)
        # Queued messages whose turn ended while no process was there to answer them (it died).
        for session_id in await self.read(turns.sessions_with_stalled_queues):
            self.spawn(self.queue_next(session_id))

    async def _heartbeat(self, running: _Running) -> None:
        beats = 0
        while True:
            await asyncio.sleep(settings.CHAT["WORKER_HEARTBEAT"])
            if self._running is not running:
                return
            try:
                await self.write(liveness.heartbeat)
                beats += 1
                if beats % 3 == 0:
                    await self.sweep()
                if beats % 60 == 0:
                    await self.write(liveness.forget_dead_workers)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("Heartbeat failed", exc_info=True)

    async def _checkpoints(self, running: _Running) -> None:
        while True:
            await asyncio.sleep(settings.CHAT["CHECKPOINT_INTERVAL"])
            if self._running is not running:
                return
            try:
                await running.replies.checkpoint()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep streaming; the next checkpoint or the final save catches up
                metrics.CHECKPOINT_FAILURES.inc()
                logger.warning("Checkpoint failed", exc_info=True)

    async def bus_answers(self) -> bool:
        """Whether the way to other processes works (Redis answers); always, for one process alone."""
        running = self._running
        if running is not None and running.loop is _current_loop():
            return await running.bus.ping()
        if not settings.REDIS_URL:
            return True
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()

    async def mark_interrupted(self, session_id: uuid.UUID | None = None) -> None:
        await self.write(turn_replies.replies_mark_interrupted, session_id=session_id, running_here=self._here().replies.running())

    # Shutdown -----------------------------------------------------------------------------------

    def _hook_server_shutdown(self) -> None:
        """Under daphne: SIGTERM drains (see `drain`), and this process's replies end before it exits."""
        if self._shutdown_hooked or self._running is None:
            return
        if server.on_shutdown(self._on_server_shutdown):
            server.take_sigterm(self._on_sigterm, self._running.loop)
            self._shutdown_hooked = True

    def _on_sigterm(self) -> None:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._drain_then_stop())
        else:
            logger.warning("SIGTERM again while draining: stopping now")
            self._cut.set()

    async def _drain_then_stop(self) -> None:
        try:
            await self.drain()
        except Exception:
            logger.exception("The drain failed; stopping")
        finally:
            server.stop()  # the shutdown trigger (`shutdown`) interrupts what is left

    def _on_server_shutdown(self):  # type: ignore[no-untyped-def]
        from twisted.internet.defer import Deferred

        return Deferred.fromFuture(asyncio.ensure_future(self.shutdown(), loop=self.loop))

    async def drain(self, grace: float | None = None) -> None:
        """Stop taking new work, let the work under way here finish (up to `grace` seconds), then close every socket.

        At once: daphne's listening sockets close (a balancer's next connection goes to another
        process), `/healthz` answers 503, a new socket is closed with 4503 and a new user message
        is refused with `unavailable`. Then the turns under way (replies, their tools and
        continuations, plan steps) and the HTTP requests in flight may end, for up to `grace`
        (SHUTDOWN_GRACE); the heartbeat goes on, so no other process takes these replies for a
        dead one's. Then every socket is closed with 4503: clients reconnect (through the
        balancer, to another process) and resync. What still runs is interrupted by `shutdown`,
        with all its text. Turns waiting for someone (approvals, client tools) stay for any process.
        """
        running = self._here()
        grace = settings.CHAT["SHUTDOWN_GRACE"] if grace is None else grace
        self.draining = True
        metrics.DRAINING.set(1)
        server.stop_listening()
        loop = running.loop
        started = loop.time()
        logger.info(
            "Draining: %d turns under way (%d replies streaming), %d sockets open; waiting up to %.0f s",
            len(running.turns), len(running.replies.runs), len(running.hub.sinks), grace,
        )
        while (running.turns or running.starting or self.http_requests) and not self._cut.is_set() and loop.time() - started < grace:
            await asyncio.sleep(DRAIN_POLL)
        left = len(running.turns)
        await running.hub.settle(DRAIN_SETTLE)  # the frames of what just ended reach the sockets before their close
        closed = await running.hub.close_sockets()
        # Their clients answer the close; until then the connection is open, and stopping now would reset it.
        waited = loop.time()
        while server.open_connections() and loop.time() - waited < DRAIN_CLOSE_WAIT:
            await asyncio.sleep(DRAIN_POLL)
        logger.info("Drained in %.1f s: %d sockets closed, %d turns left to interrupt", loop.time() - started, closed, left)

    async def shutdown(self) -> None:
        """Stop replies (their text is saved, status `interrupted`) and leave the list of live processes."""
        running = self._running
        if running is None:
            return
        self.draining = True
        metrics.REPLIES_INTERRUPTED.labels("shutdown").inc(len(running.replies.runs))
        tasks = list(running.background)
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=10)
        for task in running.tasks:
            task.cancel()
        running.close_batches()
        try:
            await self.write(liveness.forget_self)
        except Exception:
            logger.warning("Could not remove this process from the worker list", exc_info=True)
        await running.hub.close()
        await running.bus.close()
        await asyncio.get_running_loop().run_in_executor(None, db.close_connections)


    def close(self) -> None:
        """From sync code at exit (tests, commands): stop the private loop's engine and close every connection."""
        loop = self._private_loop
        if loop is not None and loop.is_running() and self._running is not None and self._running.loop is loop:
            try:
                asyncio.run_coroutine_threadsafe(self.shutdown(), loop).result(15)
            except Exception:
                logger.warning("The engine did not stop cleanly", exc_info=True)
        self._running = None
        db.close_connections()


class _BusListener:
    """What the bus hands the engine: frames for local sockets, requests about local replies, a lost link."""

    def __init__(self, engine: Engine, running: _Running) -> None:
        self.engine = engine
        self.running = running

    def frame_from_bus(self, session_id: uuid.UUID, text: str) -> None:
        self.running.hub.frame_from_bus(session_id, text)

    async def control_from_bus(self, message: dict[str, Any]) -> None:
        await self.running.replies.on_request(message)

    def bus_reconnected(self) -> None:
        self.running.hub.resync_all()


_orphans: set[asyncio.Task] = set()


def _current_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _count_interrupted_elsewhere(effects: list[outbox.Effect]) -> None:
    """Replies ended `interrupted` by a step other than their own end: found by a sweep, their process gone."""
    gone = sum(
        1 for effect in effects
        if isinstance(effect, outbox.Frame) and effect.frame.get("type") == "message.completed"
        and (effect.frame.get("message") or {}).get("status") == "interrupted"
    )
    if gone:
        metrics.REPLIES_INTERRUPTED.labels("process_gone").inc(gone)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Background task failed", exc_info=task.exception())


engine = Engine()
