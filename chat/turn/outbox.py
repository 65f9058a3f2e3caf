"""What a committed step asks the engine to do: frames to send, replies to start, work to drive.

A sync step never sends a frame or starts a task itself. It records an effect with
`after_commit(effect)`; the effect leaves only when the transaction commits (at once outside
one), and never when it rolls back. Where it goes then:

- inside a step the engine runs (`collecting()`), into that step's list, which the engine
  dispatches when the step returns on the event loop: no thread hop per frame;
- anywhere else (a REST view, the admin, a management command), to the handler the engine
  installed with `install()`, which hands it to the event loop without waiting.

This module imports nothing of the async runtime: the engine depends on it, never the reverse.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction


@dataclass(frozen=True)
class Frame:
    """A server-to-client frame for every socket of a session, in every process."""

    session_id: uuid.UUID
    frame: dict[str, Any]


@dataclass
class StartReply:
    """Stream the reply `message_id` (a `streaming` placeholder). `context` when the step already read it."""

    message_id: uuid.UUID
    context: Any = None


@dataclass(frozen=True)
class Drive:
    """Take the turn of reply `reply_id` on from `step` (a server tool to run, a continuation to stream)."""

    reply_id: uuid.UUID
    step: Any = None


@dataclass(frozen=True)
class RunPlan:
    """Start the next step of a running plan."""

    plan_id: uuid.UUID


@dataclass(frozen=True)
class CancelReply:
    """Stop a streaming reply wherever it runs (its row may be gone: the process is named)."""

    message_id: uuid.UUID
    worker_id: str = ""


@dataclass(frozen=True)
class QueueNext:
    """The session has queued messages: answer the first if its turn is over (chat.turn.turns)."""

    session_id: uuid.UUID


Effect = Frame | StartReply | Drive | RunPlan | CancelReply | QueueNext


@dataclass
class _Collector:
    effects: list[Effect] = field(default_factory=list)


_local = threading.local()
_handler: Callable[[list[Effect]], None] | None = None


def install(handler: Callable[[list[Effect]], None]) -> None:
    """Where effects go outside an engine step (set once by the engine; thread-safe, must not block)."""
    global _handler
    _handler = handler


def _deliver(effect: Effect) -> None:
    collector: _Collector | None = getattr(_local, "collector", None)
    if collector is not None:
        collector.effects.append(effect)
    elif _handler is not None:
        _handler([effect])
    # No engine in this process (a bare script): nobody listens, and the database holds the truth.


def after_commit(effect: Effect) -> None:
    """Send `effect` when the current transaction commits (at once outside a transaction)."""
    transaction.on_commit(lambda: _deliver(effect))


def frame(session_id: uuid.UUID | str, data: dict[str, Any]) -> None:
    """Send a frame to the session's sockets after commit."""
    after_commit(Frame(session_id if isinstance(session_id, uuid.UUID) else uuid.UUID(str(session_id)), data))


@contextmanager
def collecting() -> Iterator[list[Effect]]:
    """Collect the effects of what runs inside, instead of handing each to the installed handler."""
    previous = getattr(_local, "collector", None)
    collector = _Collector()
    _local.collector = collector
    try:
        yield collector.effects
    finally:
        _local.collector = previous
