"""The one place that locks a session row.

Every step that writes in a session locks its row first, then what it moves (messages, tool
calls, approvals, plans). One order everywhere means two steps of one session never deadlock;
they queue. The lock also serialises `seq`: it is bumped on the locked row, and the unique
(session, seq) constraint backs it. On SQLite, where `select_for_update` is a no-op, the
IMMEDIATE transactions of settings.py take the database's write lock at BEGIN instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from chat.branches import Tip
from chat.exceptions import NotFound
from chat.models import Branch, Message
from chat.turn import outbox, rows
from sessions_app.models import ChatSession


class LockedSession:
    """A session row locked until the transaction ends.

    `seq`, `message_count` and `updated_at` change on this object and are written back with one
    UPDATE by `save()` (`session_step` calls it on the way out), however many messages the step adds.
    """

    def __init__(self, session: ChatSession, checks: rows.SessionRow | None = None) -> None:
        # The row's id, owner, seq, message count, mode, agent id, active branch and queue (what steps use; not a full instance).
        self.session = session
        self.checks = checks
        self._changed: set[str] = set()
        # Set by a step that must not wake the session's queue (the queue's own step).
        self.quiet = False

    @property
    def pk(self) -> uuid.UUID:
        return self.session.pk

    def allocate(self, count: int = 1) -> int:
        """The first of `count` new seqs, for `count` new messages."""
        first = self.session.seq + 1
        self.session.seq += count
        self.session.message_count += count
        self._changed.update(("seq", "message_count"))
        return first

    def mark(self, *names: str) -> None:
        """Fields of the row a step changed itself (by attname), to be written back by `save()`."""
        self._changed.update(names)

    def touch(self, when: datetime | None = None) -> datetime:
        """Mark activity (the sessions list is ordered by it)."""
        self.session.updated_at = when or timezone.now()
        self._changed.add("updated_at")
        return self.session.updated_at

    # The message tree (chat.branches) ----------------------------------------------------------

    def append(self, message: Message) -> None:
        """Put a new message at the end of the active branch (its parent the active leaf) and make it the leaf."""
        session = self.session
        message.parent_id, message.line, message.depth = session.leaf_id, session.leaf_line, session.leaf_depth + 1
        session.leaf_id, session.leaf_depth = message.pk, message.depth
        self._changed.update(("leaf_id", "leaf_depth"))

    def fork(self, message: Message, parent: Tip | None) -> Branch:
        """Add a new message under `parent` (None: a new first message) although it has a child already: a new line,
        whose `Branch` row the caller inserts. The new message becomes the active leaf."""
        session = self.session
        session.lines += 1
        message.parent_id = parent.id if parent is not None else None
        message.line, message.depth = session.lines, (parent.depth + 1) if parent is not None else 1
        self.switch(Tip(message.pk, message.line, message.seq, message.depth))
        self._changed.add("lines")
        return Branch(session_id=session.pk, line=message.line, base_line=parent.line if parent else None, base_seq=parent.seq if parent else None)

    def switch(self, leaf: Tip) -> None:
        """Make `leaf` the end of the active branch."""
        session = self.session
        session.leaf_id, session.leaf_line, session.leaf_depth = leaf.id, leaf.line, leaf.depth
        self._changed.update(("leaf_id", "leaf_line", "leaf_depth"))

    def relink(self) -> None:
        """Before the first fork of a conversation: make sure each of its messages has its parent.

        A conversation that never forked is one chain, its active leaf the last message, so its leaf's
        depth is its message count. When they differ, messages were added by a server process of the
        previous release (a deployment migrates while the old processes still serve): they have no
        parent and the leaf is behind. They are linked by seq, as the migration linked those before.
        Costs nothing when they agree.
        """
        session = self.session
        if session.lines != 1 or session.leaf_depth == session.message_count:
            return
        last = rows.relink_linear(session.pk)
        if last is not None:
            self.switch(Tip(last[0], 1, last[1], last[2]))

    def leaf_tip(self) -> Tip | None:
        """The active leaf, read (one query) when a step needs its seq."""
        session = self.session
        if session.leaf_id is None:
            return None
        seq = Message.objects.filter(pk=session.leaf_id).values_list("seq", flat=True).first()
        return Tip(session.leaf_id, session.leaf_line, seq, session.leaf_depth) if seq is not None else None

    def save(self) -> None:
        # Messages wait in the session's queue: whatever this step ended, the queue's own step looks
        # after the commit whether the turn is over (chat.turn.turns). It costs nothing without a queue.
        if self.session.queued > 0 and not self.quiet:
            outbox.after_commit(outbox.QueueNext(self.session.pk))
        if self._changed:
            rows.session_save(self.session.pk, {name: getattr(self.session, name) for name in self._changed})
            self._changed.clear()


def lock_session(session_id: uuid.UUID, *, owner_id: int | None = None) -> LockedSession:
    """Lock the session row; call inside transaction.atomic.

    With `owner_id`, another user's session is not found, exactly like a missing one.
    """
    _in_transaction()
    found = rows.lock_session(session_id, owner_id=owner_id)
    if found is None:
        raise NotFound("Session not found.")
    return LockedSession(found.session, found)


def lock_for_turns(requests: Sequence[tuple[uuid.UUID, int, str | None]]) -> dict[uuid.UUID, LockedSession]:
    """Lock the sessions of several turns, (session, owner, client_id) each, with their busy checks; call inside atomic.

    Missing or foreign sessions are left out. The caller writes each row back (`LockedSession.save`
    or `rows.sessions_save_turns`).
    """
    _in_transaction()
    return {session_id: LockedSession(found.session, found) for session_id, found in rows.lock_for_turns(requests).items()}


def _in_transaction() -> None:
    if not connection.in_atomic_block:
        raise RuntimeError("a session must be locked inside transaction.atomic()")


@contextmanager
def session_step(session_id: uuid.UUID, *, owner_id: int | None = None) -> Iterator[LockedSession]:
    """A transaction that starts by locking the session and ends by writing its row back once."""
    with transaction.atomic():
        locked = lock_session(session_id, owner_id=owner_id)
        yield locked
        locked.save()
