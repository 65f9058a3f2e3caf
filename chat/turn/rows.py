"""The statements of the hot path, written as SQL.

A chat turn runs a handful of statements, hundreds of times a second under load. Building and
compiling an ORM query costs far more than running it: on this project's reference machine a
session lookup through the ORM takes about 1.5 ms of CPU, the same statement through the
cursor 0.07 ms, and every one of those milliseconds is taken from the event loop that streams
the replies (one process, one GIL). So the statements every turn runs are written here once, in
SQL both SQLite and PostgreSQL accept, with table and column names taken from the models and
values adapted by the models' own fields. Everything else stays on the ORM.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.utils import timezone
from rest_framework.authtoken.models import Token

from chat.branches import Path
from chat.dbvalues import to_datetime, to_uuid
from chat.models import Agent, Approval, Message, Plan, QueuedMessage, Reaction, TokenBudget, ToolCall, UsageDay
from sessions_app.models import ChatSession

ENDED_CALLS = ("done", "failed", "rejected", "superseded")
OPEN_PLANS = (Plan.Status.PENDING, Plan.Status.RUNNING)


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def _table(model: Any) -> str:
    return _q(model._meta.db_table)


def _col(model: Any, field: str) -> str:
    return _q(model._meta.get_field(field).column)


def _uuid(value: uuid.UUID) -> Any:
    return Message._meta.pk.get_db_prep_value(value, connection)


def to_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _instance(model: Any, fields: Sequence[Any], row: Sequence[Any]) -> Any:
    """A model instance from a row of `fields`, with the conversions the ORM would apply."""
    values = []
    for f, value in zip(fields, row, strict=True):
        kind = f.get_internal_type()
        if value is not None:
            if kind == "DateTimeField":
                value = to_datetime(value)
            elif kind == "BooleanField":
                value = bool(value)
            elif kind == "JSONField":
                value = to_json(value)
            elif kind == "UUIDField":
                value = to_uuid(value)
        values.append(value)
    return model.from_db(connection.alias, [f.attname for f in fields], values)


def active_agents() -> list[Agent]:
    """The active agents, in creation order: one statement (every turn asks who answers)."""
    fields = list(Agent._meta.concrete_fields)
    columns = ", ".join(_q(f.column) for f in fields)
    sql = f"SELECT {columns} FROM {_table(Agent)} WHERE {_col(Agent, 'is_active')} = %s ORDER BY {_col(Agent, 'id')}"
    with connection.cursor() as cursor:
        cursor.execute(sql, [True])
        return [_instance(Agent, fields, row) for row in cursor.fetchall()]


# Sessions -------------------------------------------------------------------------------------

SESSION_FIELDS = ("id", "owner", "seq", "message_count", "mode", "agent", "leaf", "leaf_line", "leaf_depth", "lines", "on_busy", "queued")
N_SESSION = len(SESSION_FIELDS)


@dataclass
class SessionRow:
    session: ChatSession
    # Read in the same statement that locked the row (turn_start's busy checks).
    streaming: bool = False
    open_calls: bool = False
    open_plans: bool = False
    seen_client_id: uuid.UUID | None = None
    seen_queued: uuid.UUID | None = None  # the queued message (chat.QueuedMessage) with the turn's client_id
    owner_streaming: int = 0  # replies of the session's owner streaming now, in any session
    owner_tokens_today: int = 0  # tokens of the owner's replies today (UsageDay)
    owner_budget: int | None = None  # the owner's own daily token budget (TokenBudget), None: the setting's


def _session_from(values: Sequence[Any]) -> ChatSession:
    session_id, owner_id, seq, message_count, mode, agent_id, leaf_id, leaf_line, leaf_depth, lines, on_busy, queued = values
    session = ChatSession(
        id=to_uuid(session_id), owner_id=owner_id, seq=seq, message_count=message_count, mode=mode, agent_id=agent_id,
        leaf_id=to_uuid(leaf_id) if leaf_id is not None else None, leaf_line=leaf_line, leaf_depth=leaf_depth, lines=lines,
        on_busy=on_busy, queued=queued,
    )
    session._state.adding = False
    session._state.db = connection.alias
    return session


def lock_session(session_id: uuid.UUID, *, owner_id: int | None = None) -> SessionRow | None:
    """Lock the session row (FOR UPDATE on PostgreSQL; SQLite's IMMEDIATE transaction holds the write lock already)."""
    columns = ", ".join(f"s.{_col(ChatSession, f)}" for f in SESSION_FIELDS)
    where = f"s.{_col(ChatSession, 'id')} = %s"
    params: list[Any] = [_uuid(session_id)]
    if owner_id is not None:
        where += f" AND s.{_col(ChatSession, 'owner')} = %s"
        params.append(owner_id)
    sql = f"SELECT {columns} FROM {_table(ChatSession)} s WHERE {where}{_lock_clause()}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return SessionRow(_session_from(row)) if row is not None else None


def _lock_clause() -> str:
    if not connection.features.has_select_for_update:
        return ""
    return " FOR UPDATE OF s" if connection.features.has_select_for_update_of else " FOR UPDATE"


def lock_for_turns(requests: Sequence[tuple[uuid.UUID, int, str | None]]) -> dict[uuid.UUID, SessionRow]:
    """Lock the sessions of several turns at once, (session, owner, client_id) each: one statement.

    The same statement reads, for each, whether a reply streams, a tool call or a plan is open,
    and which message already has the turn's `client_id`. A session that is missing or another
    user's is simply not in the answer. Rows are locked in id order, whoever asks.
    """
    on_postgres = connection.vendor == "postgresql"
    as_uuid, as_owner, as_text = ("CAST(%s AS uuid)", "CAST(%s AS bigint)", "CAST(%s AS varchar)") if on_postgres else ("%s", "%s", "%s")
    values = ", ".join([f"({as_uuid}, {as_owner}, {as_text})"] * len(requests))
    s, m, t, p = _table(ChatSession), _table(Message), _table(ToolCall), _table(Plan)
    sid = f"s.{_col(ChatSession, 'id')}"
    columns = ", ".join(f"s.{_col(ChatSession, f)}" for f in SESSION_FIELDS)
    ended = ", ".join(["%s"] * len(ENDED_CALLS))
    # The owner's streaming replies, counted up to the cap only (chat.turn.budget); none when there is no cap.
    cap = settings.CHAT["MAX_REPLIES_PER_USER"]
    owner_streaming = (
        f"(SELECT COUNT(*) FROM (SELECT 1 FROM {s} o JOIN {m} m ON m.{_col(Message, 'session')} = o.{_col(ChatSession, 'id')}"
        f" WHERE o.{_col(ChatSession, 'owner')} = r.owner AND m.{_col(Message, 'status')} = %s LIMIT {int(cap)}) x)"
        if cap > 0 else "0"
    )
    sql = (
        f"WITH r(sid, owner, client_id) AS (VALUES {values}) SELECT {columns}"
        f", EXISTS(SELECT 1 FROM {m} m WHERE m.{_col(Message, 'session')} = {sid} AND m.{_col(Message, 'status')} = %s)"
        f", EXISTS(SELECT 1 FROM {t} t WHERE t.{_col(ToolCall, 'session')} = {sid} AND t.{_col(ToolCall, 'status')} NOT IN ({ended}))"
        f", EXISTS(SELECT 1 FROM {p} p WHERE p.{_col(Plan, 'session')} = {sid} AND p.{_col(Plan, 'status')} IN (%s, %s))"
        f", (SELECT m.{_col(Message, 'id')} FROM {m} m WHERE m.{_col(Message, 'session')} = {sid} AND m.{_col(Message, 'client_id')} = r.client_id)"
        f", CASE WHEN s.{_col(ChatSession, 'queued')} > 0 THEN (SELECT q.{_col(QueuedMessage, 'id')} FROM {_table(QueuedMessage)} q"
        f" WHERE q.{_col(QueuedMessage, 'session')} = {sid} AND q.{_col(QueuedMessage, 'client_id')} = r.client_id) END"
        f", {owner_streaming}"
        f", (SELECT u.{_col(UsageDay, 'prompt_tokens')} + u.{_col(UsageDay, 'completion_tokens')} FROM {_table(UsageDay)} u"
        f" WHERE u.{_col(UsageDay, 'user')} = r.owner AND u.{_col(UsageDay, 'day')} = %s)"
        f", (SELECT b.{_col(TokenBudget, 'daily_tokens')} FROM {_table(TokenBudget)} b WHERE b.{_col(TokenBudget, 'user')} = r.owner)"
        # PostgreSQL: whether the row locked is the row this statement's snapshot saw (see below).
        + (f", s.xmin::text = (SELECT f.xmin::text FROM {s} f WHERE f.{_col(ChatSession, 'id')} = {sid})" if on_postgres else "")
        + f" FROM {s} s JOIN r ON {sid} = r.sid AND s.{_col(ChatSession, 'owner')} = r.owner ORDER BY {sid}{_lock_clause()}"
    )
    params: list[Any] = []
    for session_id, owner_id, client_id in requests:
        params += [_uuid(session_id), owner_id, client_id]
    params += [Message.Status.STREAMING, *ENDED_CALLS, *OPEN_PLANS] + ([Message.Status.STREAMING] if cap > 0 else [])
    params.append(UsageDay._meta.get_field("day").get_db_prep_save(timezone.localdate(), connection))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = cursor.fetchall()
        # On PostgreSQL a row lock that waited for another transaction returns the row as that
        # transaction left it, but the checks in the same statement still read the snapshot taken
        # before the wait: a reply that transaction started would look absent. When a locked row
        # is newer than the snapshot, the statement runs again (the locks are held: it does not
        # wait) with a snapshot that sees it. Without contention this costs nothing.
        for _ in range(3):
            if not on_postgres or all(row[-1] for row in found):
                break
            cursor.execute(sql, params)
            found = cursor.fetchall()
    rows: dict[uuid.UUID, SessionRow] = {}
    n = N_SESSION
    for row in found:
        session = _session_from(row[:n])
        rows[session.pk] = SessionRow(
            session, bool(row[n]), bool(row[n + 1]), bool(row[n + 2]), to_uuid(row[n + 3]) if row[n + 3] is not None else None,
            to_uuid(row[n + 4]) if row[n + 4] is not None else None, int(row[n + 5]), int(row[n + 6] or 0),
            int(row[n + 7]) if row[n + 7] is not None else None,
        )
    return rows


def session_save(session_id: uuid.UUID, values: dict[str, Any]) -> None:
    """One UPDATE of what a step changed on the locked row (seq, message count, activity, active branch, queue), by field name or attname."""
    fields = [(ChatSession._meta.get_field(name), value) for name, value in values.items()]
    assignments = ", ".join(f"{_q(f.column)} = %s" for f, _ in fields)
    params = [f.get_db_prep_save(value, connection) for f, value in fields] + [_uuid(session_id)]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {_table(ChatSession)} SET {assignments} WHERE {_col(ChatSession, 'id')} = %s", params)


def sessions_save_turns(sessions: Sequence[ChatSession]) -> None:
    """The seq, message count and activity of several locked rows: one statement run for each (one execute for one)."""
    if not sessions:
        return
    conn = connections[DEFAULT_DB_ALIAS]
    fields = [ChatSession._meta.get_field(name) for name in ("seq", "message_count", "updated_at", "leaf", "leaf_depth")]
    assignments = ", ".join(f"{_q(f.column)} = %s" for f in fields)
    sql = f"UPDATE {_table(ChatSession)} SET {assignments} WHERE {_col(ChatSession, 'id')} = %s"
    on_sqlite, as_time = conn.vendor == "sqlite", conn.ops.adapt_datetimefield_value

    def key(value: uuid.UUID | None) -> Any:
        return value.hex if on_sqlite and value is not None else value

    params = [[s.seq, s.message_count, as_time(s.updated_at), key(s.leaf_id), s.leaf_depth, key(s.pk)] for s in sessions]
    with conn.cursor() as cursor:
        if len(params) == 1:
            cursor.execute(sql, params[0])
        else:
            cursor.executemany(sql, params)


@dataclass(frozen=True)
class Opened:
    """What a socket's snapshot needs to know first; details are read only when something is open."""

    session: ChatSession
    title: str
    created_at: datetime | None
    updated_at: datetime | None
    agent_slug: str | None
    streaming: bool
    waiting: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0


def session_for_socket(*, session_id: uuid.UUID, owner_id: int) -> Opened | None:
    """The user's session, and whether a reply streams or anything waits for the client: one statement."""
    s, m, t, a, p = _table(ChatSession), _table(Message), _table(ToolCall), _table(Approval), _table(Plan)
    approval = Approval
    sid = f"s.{_col(ChatSession, 'id')}"
    columns = ", ".join(f"s.{_col(ChatSession, f)}" for f in SESSION_FIELDS)
    sql = (
        f"SELECT {columns}, s.{_col(ChatSession, 'title')}, s.{_col(ChatSession, 'created_at')}, s.{_col(ChatSession, 'updated_at')}, g.{_col(Agent, 'slug')}"
        f", s.{_col(ChatSession, 'prompt_tokens')}, s.{_col(ChatSession, 'completion_tokens')}"
        f", EXISTS(SELECT 1 FROM {m} m WHERE m.{_col(Message, 'session')} = {sid} AND m.{_col(Message, 'status')} = %s)"
        f", EXISTS(SELECT 1 FROM {t} t WHERE t.{_col(ToolCall, 'session')} = {sid} AND t.{_col(ToolCall, 'status')} = %s)"
        f", EXISTS(SELECT 1 FROM {a} a WHERE a.{_col(approval, 'session')} = {sid} AND a.{_col(approval, 'status')} = %s)"
        f", EXISTS(SELECT 1 FROM {p} p WHERE p.{_col(Plan, 'session')} = {sid} AND p.{_col(Plan, 'status')} = %s)"
        f" FROM {s} s LEFT JOIN {_table(Agent)} g ON g.{_col(Agent, 'id')} = s.{_col(ChatSession, 'agent')}"
        f" WHERE {sid} = %s AND s.{_col(ChatSession, 'owner')} = %s"
    )
    params = [Message.Status.STREAMING, ToolCall.Status.AWAITING_CLIENT, "pending", Plan.Status.PENDING, _uuid(session_id), owner_id]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    n = N_SESSION
    return Opened(
        session=_session_from(row[:n]), title=row[n], created_at=to_datetime(row[n + 1]), updated_at=to_datetime(row[n + 2]), agent_slug=row[n + 3],
        prompt_tokens=int(row[n + 4]), completion_tokens=int(row[n + 5]), streaming=bool(row[n + 6]),
        waiting=bool(row[n + 7] or row[n + 8] or row[n + 9]),
    )


# Messages -------------------------------------------------------------------------------------

_INSERT_FIELDS = (
    "id", "session", "seq", "role", "type", "content", "status", "agent", "client_id", "reply_to", "parent", "line", "depth", "metadata", "error",
    "worker_id", "created_at", "completed_at",
)


def messages_insert(messages: Sequence[Message]) -> None:
    """One multi-row INSERT of new messages (whose every field the caller set).

    Values are adapted here for the two databases (the fields' own `get_db_prep_save` costs more
    than the insert when hundreds of turns start at once); metadata goes through its field.
    """
    if not messages:
        return
    conn = connections[DEFAULT_DB_ALIAS]
    on_sqlite = conn.vendor == "sqlite"
    as_time = conn.ops.adapt_datetimefield_value
    metadata = Message._meta.get_field("metadata")
    rows: list[Any] = []
    for m in messages:
        rows += [
            m.id.hex if on_sqlite else m.id, m.session_id.hex if on_sqlite else m.session_id, m.seq, m.role, m.type, m.content,
            m.status, m.agent_id, m.client_id, (m.reply_to_id.hex if on_sqlite else m.reply_to_id) if m.reply_to_id is not None else None,
            (m.parent_id.hex if on_sqlite else m.parent_id) if m.parent_id is not None else None, m.line, m.depth,
            metadata.get_db_prep_value(m.metadata, conn), m.error, m.worker_id, as_time(m.created_at), as_time(m.completed_at),
        ]
        m._state.adding = False
        m._state.db = conn.alias
    with conn.cursor() as cursor:
        cursor.execute(_insert_sql(conn.vendor, len(messages)), rows)


@functools.cache
def _insert_sql(vendor: str, count: int) -> str:
    columns = ", ".join(_q(Message._meta.get_field(name).column) for name in _INSERT_FIELDS)
    one = "(" + ", ".join(["%s"] * len(_INSERT_FIELDS)) + ")"
    return f"INSERT INTO {_table(Message)} ({columns}) VALUES {', '.join([one] * count)}"


def relink_linear(session_id: uuid.UUID) -> tuple[uuid.UUID, int, int] | None:
    """Link the messages of a conversation that never forked by seq (each the parent of the next, depths by place): one
    UPDATE. Its last message's id, seq and depth (None when it has none)."""
    m = _table(Message)
    mid, sid, seq, parent, depth = (_col(Message, name) for name in ("id", "session", "seq", "parent", "depth"))
    ranked = (
        f"SELECT {mid} AS id, LAG({mid}) OVER w AS prev, ROW_NUMBER() OVER w AS n FROM {m} WHERE {sid} = %s"
        f" WINDOW w AS (PARTITION BY {sid} ORDER BY {seq})"
    )
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite" and connection.Database.sqlite_version_info < (3, 33):  # no UPDATE ... FROM
            cursor.execute(ranked, [_uuid(session_id)])
            cursor.executemany(f"UPDATE {m} SET {parent} = %s, {depth} = %s WHERE {mid} = %s", [(prev, n, key) for key, prev, n in cursor.fetchall()])
        else:
            cursor.execute(f"UPDATE {m} SET {parent} = r.prev, {depth} = r.n FROM ({ranked}) r WHERE {m}.{mid} = r.id", [_uuid(session_id)])
        cursor.execute(f"SELECT {mid}, {seq}, {depth} FROM {m} WHERE {sid} = %s ORDER BY {seq} DESC LIMIT 1", [_uuid(session_id)])
        last = cursor.fetchone()
    return (to_uuid(last[0]), int(last[1]), int(last[2])) if last is not None else None


def replies_checkpoint(texts: Sequence[tuple[uuid.UUID, str]]) -> int:
    """The text so far of several streaming replies: one UPDATE with a CASE per reply (ended replies are left as they are)."""
    if not texts:
        return 0
    m, mid, content = _table(Message), _col(Message, "id"), _col(Message, "content")
    cases = " ".join(["WHEN %s THEN %s"] * len(texts))
    marks = ", ".join(["%s"] * len(texts))
    sql = f"UPDATE {m} SET {content} = CASE {mid} {cases} ELSE {content} END WHERE {mid} IN ({marks}) AND {_col(Message, 'status')} = %s"
    params: list[Any] = []
    ids = [_uuid(message_id) for message_id, _ in texts]
    for key, (_, text) in zip(ids, texts, strict=True):
        params += [key, text]
    params += [*ids, Message.Status.STREAMING]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def history_rows(*, session_id: uuid.UUID, before_seq: int, limit: int, path: Path | None = None) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(role, type, content, metadata) of the last `limit` text, tool call and tool result messages before `before_seq`, oldest first.

    `path`: the branch the history follows (chat.branches); None when the session never forked.
    """
    m = _table(Message)
    on_path, path_params = path.sql(_col(Message, "seq"), _col(Message, "line")) if path is not None else ("", [])
    sql = (
        f"SELECT {_col(Message, 'role')}, {_col(Message, 'type')}, {_col(Message, 'content')}, {_col(Message, 'metadata')} FROM {m}"
        f" WHERE {_col(Message, 'session')} = %s AND {_col(Message, 'seq')} < %s AND {_col(Message, 'type')} IN (%s, %s, %s)"
        + (f" AND {on_path}" if on_path else "")
        + f" ORDER BY {_col(Message, 'seq')} DESC LIMIT %s"
    )
    params = [_uuid(session_id), before_seq, Message.Type.TEXT, Message.Type.TOOL_CALL, Message.Type.TOOL_RESULT, *path_params, limit]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    rows.reverse()
    return [(role, kind, content, to_json(metadata) or {}) for role, kind, content, metadata in rows]


def reply_end(*, message_id: uuid.UUID, content: str, status: str, error: str | None, completed_at: datetime, metadata: dict[str, Any]) -> bool:
    """Store a reply's end if it is still streaming: one UPDATE. False when it is not (ended elsewhere, or gone)."""
    fields = [Message._meta.get_field(name) for name in ("content", "status", "error", "completed_at", "worker_id", "metadata")]
    values = {"content": content, "status": status, "error": error, "completed_at": completed_at, "worker_id": "", "metadata": metadata}
    assignments = ", ".join(f"{_q(f.column)} = %s" for f in fields)
    params = [f.get_db_prep_save(values[f.name], connection) for f in fields] + [_uuid(message_id), Message.Status.STREAMING]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {_table(Message)} SET {assignments} WHERE {_col(Message, 'id')} = %s AND {_col(Message, 'status')} = %s", params)
        return cursor.rowcount == 1


def lock_sessions(session_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, tuple[int, int]]:
    """Lock several session rows, in id order, with one statement; (owner, queued messages) by id (missing ones are left out)."""
    ids = sorted(set(session_ids))
    if not ids:
        return {}
    sid = f"s.{_col(ChatSession, 'id')}"
    marks = ", ".join(["%s"] * len(ids))
    sql = (
        f"SELECT {sid}, s.{_col(ChatSession, 'owner')}, s.{_col(ChatSession, 'queued')} FROM {_table(ChatSession)} s"
        f" WHERE {sid} IN ({marks}) ORDER BY {sid}{_lock_clause()}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [_uuid(session_id) for session_id in ids])
        return {to_uuid(session_id): (owner_id, queued) for session_id, owner_id, queued in cursor.fetchall()}


def sessions_finish(adds: Mapping[uuid.UUID, tuple[int, int]], when: datetime) -> dict[uuid.UUID, tuple[int, int]]:
    """Mark activity on several (locked) session rows and add their replies' (prompt, completion) tokens: one UPDATE.

    The sessions' token totals afterwards, by id (missing sessions are left out).
    """
    if not adds:
        return {}
    s, sid = _table(ChatSession), _col(ChatSession, "id")
    prompt, completion = _col(ChatSession, "prompt_tokens"), _col(ChatSession, "completion_tokens")
    keys = [_uuid(session_id) for session_id in adds]
    assignments = [f"{_col(ChatSession, 'updated_at')} = %s"]
    params: list[Any] = [ChatSession._meta.get_field("updated_at").get_db_prep_save(when, connection)]
    counted = [(key, tokens) for key, tokens in zip(keys, adds.values(), strict=True) if tokens != (0, 0)]
    for column, part in ((prompt, 0), (completion, 1)):
        if counted:
            assignments.append(f"{column} = {column} + CASE {sid} " + " ".join(["WHEN %s THEN %s"] * len(counted)) + " ELSE 0 END")
            for key, tokens in counted:
                params += [key, tokens[part]]
    where = f"{sid} IN ({', '.join(['%s'] * len(keys))})"
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite" and connection.Database.sqlite_version_info < (3, 35):  # no RETURNING: read after (under the locks)
            cursor.execute(f"UPDATE {s} SET {', '.join(assignments)} WHERE {where}", [*params, *keys])
            cursor.execute(f"SELECT {sid}, {prompt}, {completion} FROM {s} WHERE {where}", keys)
        else:
            cursor.execute(f"UPDATE {s} SET {', '.join(assignments)} WHERE {where} RETURNING {sid}, {prompt}, {completion}", [*params, *keys])
        return {to_uuid(session_id): (int(p), int(c)) for session_id, p, c in cursor.fetchall()}


def usage_add(adds: Mapping[tuple[int, date], tuple[int, int, int]]) -> None:
    """Add (prompt tokens, completion tokens, replies) to users' day totals, (user, day) each: one upsert."""
    if not adds:
        return
    u = _table(UsageDay)
    columns = [_col(UsageDay, name) for name in ("user", "day", "prompt_tokens", "completion_tokens", "replies")]
    day = UsageDay._meta.get_field("day")
    params: list[Any] = []
    # In (user, day) order, whoever asks: two group commits never wait for each other's rows in a circle.
    for (user_id, when), (prompt, completion, replies) in sorted(adds.items()):
        params += [user_id, day.get_db_prep_save(when, connection), prompt, completion, replies]
    values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(adds))
    sums = ", ".join(f"{c} = {u}.{c} + excluded.{c}" for c in columns[2:])
    sql = f"INSERT INTO {u} ({', '.join(columns)}) VALUES {values} ON CONFLICT ({columns[0]}, {columns[1]}) DO UPDATE SET {sums}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@dataclass(frozen=True)
class ReplyEnd:
    """A reply's end as `replies_end` stores it."""

    message_id: uuid.UUID
    content: str
    status: str
    error: str | None
    metadata: dict[str, Any]


def replies_end(ends: Sequence[ReplyEnd], completed_at: datetime) -> set[uuid.UUID]:
    """Store the end of several replies that are still streaming: one UPDATE (a CASE per column). The ids it stored.

    A reply that is no longer streaming (ended elsewhere, or gone) is left as it is and is not in the answer.
    """
    if not ends:
        return set()
    m, mid = _table(Message), _col(Message, "id")
    fields = {name: Message._meta.get_field(name) for name in ("content", "status", "error", "metadata", "completed_at", "worker_id")}
    keys = [_uuid(end.message_id) for end in ends]
    assignments: list[str] = []
    params: list[Any] = []
    for name in ("content", "status", "error", "metadata"):
        column = _q(fields[name].column)
        assignments.append(f"{column} = CASE {mid} " + " ".join(["WHEN %s THEN %s"] * len(ends)) + f" ELSE {column} END")
        for key, end in zip(keys, ends, strict=True):
            params += [key, fields[name].get_db_prep_save(getattr(end, name), connection)]
    assignments.append(f"{_q(fields['completed_at'].column)} = %s")
    assignments.append(f"{_q(fields['worker_id'].column)} = %s")
    params += [fields["completed_at"].get_db_prep_save(completed_at, connection), ""]
    marks = ", ".join(["%s"] * len(ends))
    where = f"{mid} IN ({marks}) AND {_col(Message, 'status')} = %s"
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite" and connection.Database.sqlite_version_info < (3, 35):  # no RETURNING: read first (under the session locks)
            cursor.execute(f"SELECT {mid} FROM {m} WHERE {where}", [*keys, Message.Status.STREAMING])
            stored = {to_uuid(row[0]) for row in cursor.fetchall()}
            cursor.execute(f"UPDATE {m} SET {', '.join(assignments)} WHERE {where}", [*params, *keys, Message.Status.STREAMING])
            return stored
        cursor.execute(f"UPDATE {m} SET {', '.join(assignments)} WHERE {where} RETURNING {mid}", [*params, *keys, Message.Status.STREAMING])
        return {to_uuid(row[0]) for row in cursor.fetchall()}


def reactions_of_many(message_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, list[Reaction]]:
    """The reactions of several messages, by message: one SELECT."""
    found: dict[uuid.UUID, list[Reaction]] = {message_id: [] for message_id in message_ids}
    if not found:
        return found
    r = _table(Reaction)
    marks = ", ".join(["%s"] * len(found))
    sql = (
        f"SELECT {_col(Reaction, 'id')}, {_col(Reaction, 'emoji')}, {_col(Reaction, 'user')}, {_col(Reaction, 'created_at')}, {_col(Reaction, 'message')}"
        f" FROM {r} WHERE {_col(Reaction, 'message')} IN ({marks})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [_uuid(message_id) for message_id in found])
        rows = cursor.fetchall()
    for pk, emoji, user_id, created, message_id in rows:
        key = to_uuid(message_id)
        found[key].append(Reaction(id=pk, emoji=emoji, user_id=user_id, message_id=key, created_at=to_datetime(created)))
    return found


def reactions_of(message_id: uuid.UUID) -> list[Reaction]:
    """The message's reactions (emoji, user, order), for its frame."""
    r = _table(Reaction)
    sql = (
        f"SELECT {_col(Reaction, 'id')}, {_col(Reaction, 'emoji')}, {_col(Reaction, 'user')}, {_col(Reaction, 'created_at')} FROM {r}"
        f" WHERE {_col(Reaction, 'message')} = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [_uuid(message_id)])
        rows = cursor.fetchall()
    return [Reaction(id=pk, emoji=emoji, user_id=user_id, message_id=message_id, created_at=to_datetime(created)) for pk, emoji, user_id, created in rows]


# Users --------------------------------------------------------------------------------------------


def active_user_for_token(key: str) -> Any:
    """The active user whose API token this is, or None: one statement."""
    user_model = get_user_model()
    fields = list(user_model._meta.concrete_fields)
    columns = ", ".join(f"u.{_q(f.column)}" for f in fields)
    sql = (
        f"SELECT {columns} FROM {_table(user_model)} u JOIN {_table(Token)} t ON t.{_col(Token, 'user')} = u.{_q(user_model._meta.pk.column)}"
        f" WHERE t.{_col(Token, 'key')} = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [key])
        row = cursor.fetchone()
    if row is None:
        return None
    user = _instance(user_model, fields, row)
    return user if user.is_active else None
