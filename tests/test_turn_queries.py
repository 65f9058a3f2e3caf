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
# The whole turn adds the end: lock the session, one UPDATE of the reply, its reactions, the session row
# (activity and tokens), the owner's tokens of the day (one upsert; only when the reply reported usage).
# (Before the engine's rework a turn took 17 statements on SQLite; now 12, 10 on PostgreSQL.)
TURN = TURN_START + (5 if on_postgres() else 6)


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


async def test_replies_that_end_together_are_stored_together(user, api, monkeypatch, steady, settings):  # type: ignore[no-untyped-def]
    """Thirty replies end while the database threads are busy: their ends go in a few transactions, not thirty.

    Every reply is stored `complete` with its full text and every socket gets its `message.completed`;
    a reply whose session is deleted meanwhile is simply gone, and does not fail the others.
    """
    import asyncio

    from chat.engine import db as engine_db
    from chat.engine.process import engine

    settings.CHAT = {**settings.CHAT, "DEMO_SLOW_DELAY": 0.3}
    count = 30
    token = await db(token_for, user)
    sessions = [await db(session_create, owner=user, title=f"together {i}") for i in range(count)]
    comms = [await open_socket(s.pk, token=token) for s in sessions]
    for comm in comms:
        await next_frame(comm)
    writers = engine_db.pools()[0].threads
    release = threading.Event()
    blocked = threading.Semaphore(0)

    def busy() -> None:  # holds a database thread, as a long step would
        blocked.release()
        release.wait(30)

    blockers = []
    try:
        for comm in comms:
            await send(comm, {"type": "user_message", "content": "/slow 3"})
        for comm in comms:
            await frames_until(comm, "message.delta", timeout=30)
        blockers = [asyncio.ensure_future(engine.write(busy)) for _ in range(writers)]
        for _ in range(writers):
            while not blocked.acquire(blocking=False):
                await asyncio.sleep(0.01)
        # Each reply's last piece reaches its socket before its end is saved: then every end waits.
        for comm in comms:
            await frames_until(comm, "message.delta", where=lambda f: "chunk 3" in f["delta"], timeout=30)
        deleted = await db(api.delete, f"/api/v1/sessions/{sessions[0].pk}/")
        assert deleted.status_code == 204
        await asyncio.sleep(0.2)
        counter = QueryCounter(monkeypatch)
    finally:
        release.set()
        await asyncio.gather(*blockers)
    for session, comm in zip(sessions[1:], comms[1:], strict=True):
        completed = (await frames_until(comm, "message.completed", where=lambda f: f["message"]["role"] == "assistant", timeout=30))[-1]["message"]
        assert completed["status"] == "complete" and completed["content"] == "chunk 1 chunk 2 chunk 3 "
        stored = await db(lambda s=session: list(Message.objects.filter(session=s, role="assistant").values_list("status", "content")))
        assert stored == [("complete", "chunk 1 chunk 2 chunk 3 ")]
    with counter.lock:
        ends = [s for s in counter.statements if s.lstrip().upper().startswith("UPDATE") and "chat_message" in s and "completed_at" in s]
    # One runner per database thread may take a single end before the rest are grouped.
    assert 1 <= len(ends) <= writers + 1, _shown(ends)
    assert await db(lambda: Message.objects.filter(session_id=sessions[0].pk).count()) == 0
    for comm in comms:
        await comm.disconnect()
