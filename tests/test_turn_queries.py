"""SQL per turn is constant: it does not grow with the history or with the number of deltas."""

from __future__ import annotations

import threading

import pytest
from django.db.backends import utils as db_utils

from chat.models import Message
from sessions_app.models import ChatSession
from sessions_app.services import session_create
from tests.ws import db, frames_until, next_frame, open_socket, send, token_for

pytestmark = pytest.mark.django_db(transaction=True)


class QueryCounter:
    """Counts SQL statements on every thread (the turn runs on the socket's and the DB thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.statements: list[str] = []
        self.lock = threading.Lock()
        original = db_utils.CursorWrapper.execute

        def execute(wrapper, sql, params=None):  # type: ignore[no-untyped-def]
            with self.lock:
                self.statements.append(sql)
            return original(wrapper, sql, params)

        monkeypatch.setattr(db_utils.CursorWrapper, "execute", execute)

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


async def _turn_queries(counter: QueryCounter, session: ChatSession, token: str, content: str) -> int:
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    counter.reset()
    await send(comm, {"type": "user_message", "content": content})
    frames = await frames_until(comm, "message.completed", timeout=60)
    assert frames[-1]["message"]["status"] == "complete"
    count = len(counter.statements)
    await comm.disconnect()
    return count


@pytest.fixture
def steady(settings):  # type: ignore[no-untyped-def]
    # No heartbeat or checkpoint falls inside the measured turn: those are time-driven, not per turn.
    settings.CHAT = {**settings.CHAT, "WORKER_HEARTBEAT": 3600, "CHECKPOINT_INTERVAL": 3600, "DEMO_SLOW_DELAY": 0}


async def test_turn_queries_do_not_grow_with_history(user, monkeypatch, steady):  # type: ignore[no-untyped-def]
    token = await db(token_for, user)
    small = await db(_with_history, user, 10)
    large = await db(_with_history, user, 2000)
    counter = QueryCounter(monkeypatch)
    with_small = await _turn_queries(counter, small, token, "hello")
    with_large = await _turn_queries(counter, large, token, "hello")
    assert with_small == with_large, (with_small, with_large)
    assert 4 <= with_small <= 18  # 17 on SQLite (its BEGINs counted): two transactions and their reads


async def test_turn_queries_do_not_grow_with_deltas(user, monkeypatch, steady):  # type: ignore[no-untyped-def]
    token = await db(token_for, user)
    session = await db(session_create, owner=user)
    counter = QueryCounter(monkeypatch)
    few = await _turn_queries(counter, session, token, "/slow 10")
    many = await _turn_queries(counter, session, token, "/slow 1000")
    assert few == many, (few, many)
    assert few >= 4
