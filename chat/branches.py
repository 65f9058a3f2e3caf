"""The conversation as a tree: branches, versions, and the path to a message.

A session's messages form a tree (`Message.parent`): a regenerated reply is a new child of the
message the first reply answered, an edited message a new child of the message before it. The
messages with the same parent are versions of one another. The session's active branch is the
path from its first message to its active leaf (`ChatSession.leaf`); history follows it.

Reading a path by walking parents would cost one lookup per message. Instead the tree's chains
are numbered *lines* (`Message.line`): a new message continues its parent's line unless the
parent has a child already, then it starts a new line, and a `Branch` row says where that line
forks (`base_line`, `base_seq`). Along a path `seq` only grows, so the path to a message in line
L0 is: the messages of L0 after its base, then those of its base line up to the fork and after
that line's own base, and so on. These ranges tile (0, leaf seq], so the path is one filter on
the (session, seq) index, whatever its length:

    seq <= leaf AND line = CASE WHEN seq > b0 THEN L0 WHEN seq > b1 THEN L1 ... ELSE Lk END

A conversation that never forked has one line (`ChatSession.lines == 1`): every message of the
session is on the path, and no filter, no extra query, is needed at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import BooleanField, Q
from django.db.models.expressions import RawSQL

from chat.models import Branch, Message


@dataclass(frozen=True)
class Path:
    """The messages from a session's first message to the one at `leaf_seq`, as line ranges.

    `ranges`: (line, above) pairs, newest first: the messages of `line` with seq > `above` (and
    not above the previous range's `above`). The last range has `above` 0.
    """

    leaf_seq: int
    ranges: tuple[tuple[int, int], ...]

    def line_at(self, seq: int) -> int | None:
        """The line whose message at `seq` is on this path (None above the leaf)."""
        if seq > self.leaf_seq:
            return None
        for line, above in self.ranges:
            if seq > above:
                return line
        return None

    def contains(self, line: int, seq: int) -> bool:
        return self.line_at(seq) == line

    def q(self) -> Q | RawSQL:
        """This path as a filter on a queryset of messages (of its session).

        Written as SQL: compiling a CASE of a hundred WHENs through the ORM costs far more than the
        database takes to run it.
        """
        if len(self.ranges) == 1:
            return Q(seq__lte=self.leaf_seq, line=self.ranges[0][0])
        table = connection.ops.quote_name(Message._meta.db_table)
        seq, line = (f"{table}.{connection.ops.quote_name(Message._meta.get_field(name).column)}" for name in ("seq", "line"))
        sql, params = self.sql(seq, line)
        return RawSQL(sql, params, output_field=BooleanField())

    def sql(self, seq: str, line: str) -> tuple[str, list[Any]]:
        """This path as an SQL condition on the columns `seq` and `line` (quoted by the caller).

        A CASE of comparisons, not `line = CASE ... END`: PostgreSQL guesses an equality with an
        expression keeps 0.5% of the rows and may then read a whole seq range and sort it; an
        opaque condition it guesses at one half, and it walks the (session, seq) index in order
        and stops at the page's end.
        """
        if len(self.ranges) == 1:
            return f"{seq} <= %s AND {line} = %s", [self.leaf_seq, self.ranges[0][0]]
        cases = " ".join(f"WHEN {seq} > %s THEN {line} = %s" for _ in self.ranges[:-1])
        params: list[Any] = [self.leaf_seq]
        for ln, above in self.ranges[:-1]:
            params += [above, ln]
        params.append(self.ranges[-1][0])
        return f"{seq} <= %s AND (CASE {cases} ELSE {line} = %s END)", params


Bases = dict[int, tuple[int | None, int | None]]


def bases_of(session_id: uuid.UUID) -> Bases:
    """Where each line of the session forks: line -> (base line, base seq); line 1 and lines of new first messages have none. One query."""
    return {line: (base_line, base_seq) for line, base_line, base_seq in Branch.objects.filter(session_id=session_id).values_list("line", "base_line", "base_seq")}


def path_to(line: int, seq: int, bases: Bases) -> Path:
    """The path from the first message to the message at (`line`, `seq`)."""
    ranges: list[tuple[int, int]] = []
    seen: set[int] = set()
    current: int | None = line
    while current is not None and current not in seen:
        seen.add(current)
        base_line, base_seq = bases.get(current, (None, None))
        ranges.append((current, int(base_seq or 0) if base_line is not None else 0))
        current = base_line
    return Path(leaf_seq=seq, ranges=tuple(ranges))


@dataclass(frozen=True)
class Tip:
    """A message as the tree knows it: where it is and how deep."""

    id: uuid.UUID
    line: int
    seq: int
    depth: int


def session_path(session: Any, *, leaf: Tip | None = None) -> Path | None:
    """The active branch of `session` (or the path to `leaf`); None when the session never forked (every message is on it)."""
    if leaf is None:
        if session.lines <= 1:
            return None
        if session.leaf_id is None:
            return Path(leaf_seq=0, ranges=((1, 0),))
        leaf_seq = Message.objects.filter(pk=session.leaf_id).values_list("seq", flat=True).first() or 0
        leaf = Tip(session.leaf_id, session.leaf_line, leaf_seq, session.leaf_depth)
    elif session.lines <= 1:
        return Path(leaf_seq=leaf.seq, ranges=((1, 0),))
    return path_to(leaf.line, leaf.seq, bases_of(session.pk))


def tip_of(message: Message) -> Tip:
    return Tip(message.pk, message.line, message.seq, message.depth)


def latest_leaf_under(session_id: uuid.UUID, target: Tip) -> Tip:
    """The newest message among `target` and everything under it: where a branch through `target` ends.

    A newest descendant has no child (its children would be newer), so it is a leaf. Two queries.
    """
    bases = bases_of(session_id)
    below: set[int] = set()
    frontier = [ln for ln, (base_line, base_seq) in bases.items() if base_line == target.line and base_seq is not None and base_seq >= target.seq]
    while frontier:
        ln = frontier.pop()
        if ln in below:
            continue
        below.add(ln)
        frontier += [child for child, (base_line, _) in bases.items() if base_line == ln]
    under = Q(line=target.line, seq__gte=target.seq)
    if below:
        under |= Q(line__in=below)
    found = Message.objects.filter(session_id=session_id).filter(under).order_by("-seq").values_list("pk", "line", "seq", "depth").first()
    return Tip(*found) if found is not None else target


def attach_versions(messages: Sequence[Message], *, lines: int) -> None:
    """Give each message its versions (`_versions`, read by `message_data`): the ids of the messages with its
    parent, oldest first. Nothing to read when the session never forked (`lines` 1); one query otherwise.
    """
    if lines <= 1 or not messages:
        return
    session_id = messages[0].session_id
    parents = {m.parent_id for m in messages if m.parent_id is not None}
    roots = any(m.parent_id is None for m in messages)
    where = Q(parent_id__in=parents) if parents else Q(pk__in=[])
    if roots:
        where |= Q(parent__isnull=True)  # (session, parent) is indexed: a session's first messages are found at once
    found: dict[uuid.UUID | None, list[tuple[int, str]]] = {}
    # Sorted here, not by the database: ORDER BY seq would lead SQLite to the (session, seq) index,
    # which reads the whole session, instead of the (session, parent) one.
    for parent_id, message_id, seq in Message.objects.filter(session_id=session_id).filter(where).order_by().values_list("parent_id", "pk", "seq"):
        found.setdefault(parent_id, []).append((seq, str(message_id)))
    siblings = {parent_id: [message_id for _, message_id in sorted(versions)] for parent_id, versions in found.items()}
    for message in messages:
        found = siblings.get(message.parent_id)
        if found and len(found) > 1:
            message._versions = found  # type: ignore[attr-defined]


def sibling_ids(session_id: uuid.UUID, parent_id: uuid.UUID | None) -> list[str]:
    """The ids of the messages under `parent_id` (the session's first messages for None), oldest first: one query on the
    (session, parent) index (sorted here: ORDER BY seq would lead SQLite to the (session, seq) index instead)."""
    found = Message.objects.filter(session_id=session_id, parent_id=parent_id).order_by().values_list("seq", "pk")
    return [str(pk) for _, pk in sorted(found)]


def on_path(messages: Iterable[Message], path: Path | None) -> set[uuid.UUID]:
    """The ids of `messages` that are on `path` (all of them when the session never forked)."""
    if path is None:
        return {m.pk for m in messages}
    return {m.pk for m in messages if path.contains(m.line, m.seq)}
