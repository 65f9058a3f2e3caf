"""SQL per turn is constant: it does not grow with the history or with the number of deltas."""

from __future__ import annotations

import threading

import pytest
from django.db.backends import utils as db_utils

from chat.models import Message
from sessions_app.models import ChatSession
from sessions_app.services import session_create
from tests.conftest import on_postgres
from tests.ws import db, frames_until, next_frame, open_socket, send, token_for

pytestmark = pytest.mark.django_db(transaction=True)


class QueryCounter:
    """Counts SQL statements on every thread (the turn runs on the socket's and the DB thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.statements: list[str] = []
        self.lock = threading.Lock()
        original = db_utils.CursorWrapper.execute
        original_many = db_utils.CursorWrapper.executemany

        def execute(wrapper, sql, params=None):  # type: ignore[no-untyped-def]
            with self.lock:
                self.statements.append(sql)
            return original(wrapper, sql, params)

        def executemany(wrapper, sql, param_list):  # type: ignore[no-untyped-def]
            with self.lock:
                self.statements.append(sql)  # one statement, run for each set of values
            return original_many(wrapper, sql, param_list)

        monkeypatch.setattr(db_utils.CursorWrapper, "execute", execute)
        monkeypatch.setattr(db_utils.CursorWrapper, "executemany", executemany)

    def reset(self) -> None:
        with self.lock:
            self.statements.clear()


def _with_history(owner, count: int) -> ChatSession:  # type: ignore[no-untyped-def]
    session = session_create(owner=owner, title=f"{count} earlier")
    Message.objects.bulk_create(
        [
            Message(session=session, seq=i, role="user" if i % 2 else "assistant", content=f"earlier {i}", status="complete")
            for i in range(1, count + 1)
        ],
        batch_size=500,
    )
    ChatSession.objects.filter(pk=session.pk).update(seq=count, message_count=count)
    return session


async def _turn_queries(counter: QueryCounter, session: ChatSession, token: str, content: str) -> tuple[list[str], list[str]]:
    """The statements of one turn over a socket: (those before its first delta reached the socket, all of them)."""
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    counter.reset()
    await send(comm, {"type": "user_message", "content": content})
    frames = await frames_until(comm, "message.delta", timeout=60)
    with counter.lock:
        start = list(counter.statements)
    frames = await frames_until(comm, "message.completed", timeout=60)
    assert frames[-1]["message"]["status"] == "complete"
    with counter.lock:
        whole = list(counter.statements)
    await comm.disconnect()
    return start, whole


def _shown(statements: list[str]) -> str:
    return "\n".join(s[:120] for s in statements)


@pytest.fixture
def steady(settings):  # type: ignore[no-untyped-def]
    # No heartbeat or checkpoint falls inside the measured turn: those are time-driven, not per turn.
    settings.CHAT = {**settings.CHAT, "WORKER_HEARTBEAT": 3600, "CHECKPOINT_INTERVAL": 3600, "DEMO_SLOW_DELAY": 0}


# A turn's budget. Start (until the first delta): the transaction that locks the session and reads
# every busy check in one statement, reads the active agents, inserts both messages in one statement
# and writes the session row once; then the model's context (skipped on a session's first turn).
# SQLite counts its BEGIN as a statement; PostgreSQL begins implicitly. Commits are not statements.
TURN_START = 5 if on_postgres() else 6
# The whole turn adds the end: lock the session, one UPDATE of the reply, its reactions, the session row.
# (Before the engine's rework a turn took 17 statements on SQLite; now 11, 9 on PostgreSQL.)
TURN = TURN_START + (4 if on_postgres() else 5)


async def test_a_turn_starts_with_a_fixed_handful_of_statements(user, monkeypatch, steady):  # type: ignore[no-untyped-def]
    token = await db(token_for, user)
    session = await db(_with_history, user, 10)
    counter = QueryCounter(monkeypatch)
    start, whole = await _turn_queries(counter, session, token, "hello")
    assert len(start) <= TURN_START, _shown(start)
    assert len(whole) <= TURN, _shown(whole)
    first = await db(session_create, owner=user)
    start, _ = await _turn_queries(counter, first, token, "hello")
    assert len(start) <= TURN_START - 1, _shown(start)  # a first turn has no history to read


async def test_turn_queries_do_not_grow_with_history(user, monkeypatch, steady):  # type: ignore[no-untyped-def]
    token = await db(token_for, user)
    small = await db(_with_history, user, 10)
    large = await db(_with_history, user, 2000)
    counter = QueryCounter(monkeypatch)
    _, with_small = await _turn_queries(counter, small, token, "hello")
    _, with_large = await _turn_queries(counter, large, token, "hello")
    assert len(with_small) == len(with_large), (_shown(with_small), _shown(with_large))


async def test_turn_queries_do_not_grow_with_deltas(user, monkeypatch, steady):  # type: ignore[no-untyped-def]
    token = await db(token_for, user)
    session = await db(_with_history, user, 10)
    counter = QueryCounter(monkeypatch)
    _, few = await _turn_queries(counter, session, token, "/slow 10")
    _, many = await _turn_queries(counter, session, token, "/slow 1000")
    assert len(few) == len(many), (_shown(few), _shown(many))
