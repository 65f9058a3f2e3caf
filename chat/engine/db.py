"""Database threads: where the engine runs the sync steps of chat.turn.

Django's ORM and its transactions are sync, so each step runs on a thread. Channels'
`database_sync_to_async` puts every call of the process on one shared thread and closes the
connection after each (reopening it costs milliseconds on SQLite); under hundreds of
concurrent turns that thread becomes the queue every first delta waits in. Here two small
pools of long-lived threads keep their own connection each:

- writes (`DB_WRITE_THREADS`): steps that change rows. SQLite has one writer at a time, and a
  writer that finds the file locked sleeps in SQLite's busy handler (1 ms, then longer), so one
  thread that never collides is fastest; PostgreSQL runs writes of different sessions at once.
- reads (`DB_READ_THREADS`): snapshots, pages, token checks; SQLite in WAL mode reads while
  the writer writes.

A step's effects (chat.turn.outbox) come back with its result and are dispatched on the event
loop by the caller, in commit order. Time spent waiting for a thread is measured
(`chat_db_queue_seconds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import connections

from chat.turn import outbox
from chatproject import metrics

logger = logging.getLogger(__name__)

def _tidy_connections() -> None:
    """After a step: keep the thread's connection unless it broke (it reconnects on the next step)."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            continue
        if conn.in_atomic_block:
            logger.error("A step left a transaction open on %s; closing the connection", conn.alias)
            conn.close()
        elif conn.errors_occurred:
            if conn.is_usable():
                conn.errors_occurred = False
            else:
                conn.close()


def _close_connections() -> None:
    for conn in connections.all(initialized_only=True):
        conn.close()


class StepResult:
    """What a step gave: its value or error, and the effects it committed (dispatched by the caller either way)."""

    __slots__ = ("effects", "error", "value")

    def __init__(self, value: Any, effects: list[outbox.Effect], error: BaseException | None) -> None:
        self.value, self.effects, self.error = value, effects, error


def _run_step(pool: str, queued_at: float, fn: Callable[..., Any], args: tuple, kwargs: dict) -> StepResult:
    started = time.perf_counter()
    step = getattr(fn, "__name__", "step")
    metrics.DB_QUEUE_SECONDS.labels(pool, step).observe(started - queued_at)
    with outbox.collecting() as effects:
        try:
            value = fn(*args, **kwargs)
            error = None
        except BaseException as exc:  # handed back to the event loop, with what committed before it
            value, error = None, exc
        finally:
            _tidy_connections()
            metrics.DB_STEP_SECONDS.labels(pool, step).observe(time.perf_counter() - started)
    return StepResult(value, list(effects), error)


class DbPool:
    """A few threads that run sync steps, each thread keeping one database connection."""

    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        self.threads = max(1, threads)
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=f"db-{name}")
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> StepResult:
        """Run `fn` on a thread of this pool. Never raises what `fn` raised: it is in the result, with the effects."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(_run_step, self.name, time.perf_counter(), fn, args, kwargs))

    def close_connections(self, timeout: float = 10.0) -> None:
        """Close the connection of every thread of the pool (at shutdown, and between test runs).

        Each thread takes exactly one of the jobs: they wait for one another at a barrier.
        """
        with self._lock:
            barrier = threading.Barrier(self.threads, timeout=timeout)

            def close() -> None:
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait()
                _close_connections()

            futures = [self._executor.submit(close) for _ in range(self.threads)]
            for future in futures:
                try:
                    future.result(timeout=timeout + 1)
                except Exception:
                    logger.warning("Closing the connections of pool %s timed out", self.name)


def _default_threads() -> tuple[int, int]:
    on_sqlite = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
    return (1, 2) if on_sqlite else (4, 4)


_writes: DbPool | None = None
_reads: DbPool | None = None
_pools_lock = threading.Lock()


def pools() -> tuple[DbPool, DbPool]:
    """The process's (writes, reads) pools, made on first use."""
    global _writes, _reads
    if _writes is None or _reads is None:
        with _pools_lock:
            if _writes is None or _reads is None:
                write_default, read_default = _default_threads()
                _writes = DbPool("write", settings.CHAT.get("DB_WRITE_THREADS") or write_default)
                _reads = DbPool("read", settings.CHAT.get("DB_READ_THREADS") or read_default)
    return _writes, _reads


def close_connections() -> None:
    """Close every connection the pools hold (shutdown; tests before the test database is dropped)."""
    if _writes is not None:
        _writes.close_connections()
    if _reads is not None:
        _reads.close_connections()
