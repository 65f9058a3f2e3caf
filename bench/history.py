"""REST reads against a growing history: how the sessions list and message pages scale with stored messages.

For each backend (SQLite in a temporary file, PostgreSQL in a throwaway `histbench_<random>`
database) and each scale, a fresh database is migrated and filled, then three reads go through
the real API in-process (DRF's `APIClient`, `Authorization: Token …`, `DEBUG=0`):

- `sessions list`: `GET /api/v1/sessions/`, the first page;
- `newest page`: `GET /api/v1/sessions/{id}/messages/?from=end` on the big session;
- `deep page`: the page that starts halfway through the big session. Its cursor is a real `next`
  link: the big session is paged from the start with `?limit=200` (the last step shorter, so the
  cursor lands exactly on the midpoint), outside the timed part; the timed URL keeps only the
  `cursor`, so the page has the default size (50), like the newest page;
- `branched newest page`, `branched deep page`: the same two reads of a session as long as the big
  one whose conversation forked `FORKS` (100) times along its active branch: a chain of 101
  lines, each forking from the one before just before its last message (so one message of each
  is off the branch), every message written with its parent, line and depth, a `Branch` row per
  fork and the session's leaf at the end of the last line, as edits and regenerated replies
  leave them. The active branch is then 101 line ranges: the filter of chat.branches with 100
  `WHEN`s, the worst a long, much-edited conversation asks of a page.

Each read gets 3 warm-up requests, then at least 30 timed ones (p50 and p95, in ms, of the whole
request through Django's stack). Then a few more requests run under `CaptureQueriesContext` for
the number of SQL queries, and each statement's time in `cursor.execute` (its median over
those requests): a second table shows the SQL time per request and the slowest statement, and
the slowest statement of each read at the largest scale is printed with its query plan.

Scales (messages per session; the big session has the newest activity):

- `1k`: one session of 1,000 messages;
- `100k`: one session of 100,000, plus 4 sessions of 100;
- `1M`: one session of 100,000, plus 90 sessions of 10,000 (1,000,000 messages).

The sessions list's first page holds 1, 5 and 50 sessions at these scales: its time grows with
the rows it serializes even where its SQL does not.

Messages are written with every concrete column of `Message`, prepared by the model's own fields
(`executemany` in batches of 5,000 on SQLite, one `COPY` per session on PostgreSQL); each session
then gets `seq`, distinct `created_at`/`updated_at` and, if the model has one, `message_count`. On PostgreSQL
the fill ends with `VACUUM ANALYZE`, the state autovacuum reaches on its own after a bulk load;
SQLite gets no `ANALYZE` (Django never runs it). Fill times are printed apart from the reads.

Each (backend, scale) runs in a child process of this script, with `DATABASE_URL` in its
environment; the PostgreSQL database and the SQLite folder are removed afterwards, even on error.
The JSON also records the commit and a fingerprint of uncommitted changes (a warning is printed
if they change during the run) and the load average after each run's reads.

    .venv/bin/python bench/history.py --backends sqlite,pg --scales 1k,100k,1M --json /tmp/history.json

Options: `--requests 30` (timed requests per read), `--warmup 3`, `--pg-url` (the server and a
database to connect to for CREATE/DROP DATABASE; default postgres://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MARK = "HISTBENCH "
BATCH = 5_000
PAGE_SIZE = 50  # the default page size of both paginations (chatproject/pagination.py)
CAPTURED_REQUESTS = 5
BACKENDS = ("sqlite", "pg")
READS = ("sessions list", "newest page", "deep page", "branched newest page", "branched deep page")
FORKS = 100
# Messages per session, in order of activity: the last one is the big session, the newest.
SCALES: dict[str, list[int]] = {
    "1k": [1_000],
    "100k": [100] * 4 + [100_000],
    "1M": [10_000] * 90 + [100_000],
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# Child: one (backend, scale) in its own process and database ------------------------


def django_setup() -> None:
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def has_field(model: Any, name: str) -> bool:
    from django.core.exceptions import FieldDoesNotExist

    try:
        model._meta.get_field(name)
    except FieldDoesNotExist:
        return False
    return True


def message_rows(
    session_id: uuid.UUID, count: int, start: datetime, content: Callable[[int], str] | None = None,
    tree: Callable[[int], tuple[uuid.UUID, uuid.UUID | None, int, int]] | None = None,
) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
    """The columns of `Message` and its rows for one session, prepared for the database as the ORM would.

    `content(seq)` gives a message's text (default: a short numbered sentence); `tree(seq)` its
    (id, parent id, line, depth) when the conversation forked (default: a new id, the fields' defaults)."""
    from django.db import connection

    from chat.models import Message

    fields = Message._meta.concrete_fields
    varying = {"id", "session", "seq", "role", "content", "created_at", "completed_at"} | ({"parent", "line", "depth"} if tree else set())
    constants = {"type": Message.Type.TEXT, "status": Message.Status.COMPLETE}
    const = {f.name: f.get_db_prep_save(constants.get(f.name, f.get_default()), connection) for f in fields if f.name not in varying}
    by_name = {f.name: f for f in fields}
    sid = by_name["session"].get_db_prep_save(session_id, connection)

    def rows() -> Iterator[tuple[Any, ...]]:
        for seq in range(1, count + 1):
            at = by_name["created_at"].get_db_prep_save(start + timedelta(seconds=seq), connection)
            placed = {}
            message_id = uuid.uuid4()
            if tree:
                message_id, parent, line, depth = tree(seq)
                placed = {"parent": by_name["parent"].get_db_prep_save(parent, connection), "line": line, "depth": depth}
            values = {
                **placed,
                "id": by_name["id"].get_db_prep_save(message_id, connection),
                "session": sid,
                "seq": seq,
                "role": Message.Role.USER.value if seq % 2 else Message.Role.ASSISTANT.value,
                "content": content(seq) if content else f"Message {seq}: a short sentence of benchmark history.",
                "created_at": at,
                "completed_at": at,
                **const,
            }
            yield tuple(values[f.name] for f in fields)

    return [f.column for f in fields], rows()


def insert_messages(
    session_id: uuid.UUID, count: int, start: datetime, content: Callable[[int], str] | None = None,
    tree: Callable[[int], tuple[uuid.UUID, uuid.UUID | None, int, int]] | None = None,
) -> None:
    """One session's messages: one COPY on PostgreSQL, executemany in batches on SQLite (see message_rows)."""
    from django.db import connection, transaction

    from chat.models import Message

    columns, rows = message_rows(session_id, count, start, content, tree)
    table = connection.ops.quote_name(Message._meta.db_table)
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))})"
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH:
                cursor.executemany(sql, batch)
                batch = []
        if batch:
            cursor.executemany(sql, batch)


def fill(sizes: list[int]) -> tuple[str, uuid.UUID, dict[str, float]]:
    """A user with a token and its sessions with their messages: (token, big session id, seconds by step)."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from rest_framework.authtoken.models import Token

    from sessions_app.models import ChatSession

    user = get_user_model().objects.create_user("histbench", password=None)
    token = Token.objects.create(user=user)
    counted = has_field(ChatSession, "message_count")
    started = time.perf_counter()
    at = datetime.now(UTC) - timedelta(seconds=sum(sizes) + len(sizes) + 60)
    session_id = uuid.uuid4()
    for i, count in enumerate(sizes):
        session = ChatSession.objects.create(owner=user, title=f"History {i + 1} ({count:,} messages)")
        session_id = session.pk
        insert_messages(session.pk, count, at)
        last = at + timedelta(seconds=count)
        changes: dict[str, Any] = {"seq": count, "created_at": at, "updated_at": last}
        if counted:
            changes["message_count"] = count
        ChatSession.objects.filter(pk=session.pk).update(**changes)
        at = last + timedelta(seconds=1)
    seconds = {"insert_s": time.perf_counter() - started}
    started = time.perf_counter()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    seconds["analyze_s"] = time.perf_counter() - started
    return token.key, session_id, seconds


def fill_branched(user: Any, count: int, at: datetime) -> tuple[uuid.UUID, int]:
    """A session of `count` messages whose active branch forked FORKS times (see the module's docstring): (id, branch length)."""
    from chat.models import Branch
    from sessions_app.models import ChatSession

    per_line = max(2, count // (2 * FORKS))
    first_line = count - FORKS * per_line
    ids = [uuid.uuid4() for _ in range(count + 1)]  # by seq; [0] unused
    starts = [1] + [first_line + 1 + k * per_line for k in range(FORKS)]  # the first seq of each line
    places: dict[int, tuple[uuid.UUID | None, int, int]] = {}
    depth_of: dict[int, int] = {}
    for index, first in enumerate(starts):
        line = index + 1
        last = (starts[index + 1] - 1) if index + 1 < len(starts) else count
        # Each line after the first forks from the previous line's message before its last.
        base = starts[index] - 2 if index else None
        parent_depth = depth_of[base] if base else 0
        for seq in range(first, last + 1):
            parent = ids[base] if seq == first and base else (ids[seq - 1] if seq != first else None)
            depth = (parent_depth + 1) if seq == first else depth_of[seq - 1] + 1
            depth_of[seq] = depth
            places[seq] = (parent, line, depth)
    session = ChatSession.objects.create(owner=user, title=f"Branched ({count:,} messages, {FORKS} forks)")
    insert_messages(session.pk, count, at, tree=lambda seq: (ids[seq], *places[seq]))
    Branch.objects.bulk_create(
        [Branch(session=session, line=k + 2, base_line=k + 1, base_seq=starts[k + 1] - 2) for k in range(FORKS)]
    )
    length = depth_of[count]
    ChatSession.objects.filter(pk=session.pk).update(
        seq=count, message_count=count, leaf_id=ids[count], leaf_line=FORKS + 1, leaf_depth=length, lines=FORKS + 1,
        created_at=at, updated_at=at + timedelta(seconds=count),
    )
    return session.pk, length


def get_json(client: Any, url: str) -> dict[str, Any]:
    response = client.get(url)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: {response.status_code} {response.content[:300]!r}")
    return response.json()


def deep_cursor_url(client: Any, session_id: uuid.UUID, skip: int) -> str:
    """The `next` link (its cursor only) after the first `skip` messages of the session's active branch.

    Paged from the start with `?limit=200`, the last step shorter so the cursor lands exactly there;
    the URL keeps only the `cursor`, so the page it reads has the default size."""
    url = f"/api/v1/sessions/{session_id}/messages/?limit={min(200, skip)}"
    read = 0
    while True:
        page = get_json(client, url)
        read += len(page["results"])
        if read >= skip or not page["next"]:
            break
        parts = urlsplit(page["next"])
        query = parse_qs(parts.query)
        query["limit"] = [str(min(200, skip - read))]
        url = urlunsplit(("", "", parts.path, urlencode(query, doseq=True), ""))
    if read != skip:
        raise RuntimeError(f"paging stopped after {read} messages, not {skip}")
    parts = urlsplit(page["next"])
    return urlunsplit(("", "", parts.path, urlencode({"cursor": parse_qs(parts.query)["cursor"]}, doseq=True), ""))


def query_plan(sql: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
            return "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        return "\n".join(str(row[-1]) for row in cursor.fetchall())


def capture(client: Any, url: str) -> dict[str, Any]:
    """Queries per request, each statement's median time in `cursor.execute`, and the slowest one's plan."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts: list[int] = []
    sqls: list[str] = []
    times: list[list[float]] = []
    current: list[float] = []

    def timed(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            current.append((time.perf_counter() - start) * 1000)

    for _ in range(CAPTURED_REQUESTS):
        current.clear()
        with CaptureQueriesContext(connection) as queries, connection.execute_wrapper(timed):
            get_json(client, url)
        counts.append(len(queries))
        sqls = [q["sql"] for q in queries.captured_queries]
        times.append(list(current))
    if len(set(counts)) != 1:
        raise RuntimeError(f"{url}: the number of queries varies between requests: {counts}")
    statements = [{"sql": sql, "ms": round(statistics.median(t[i] for t in times), 3)} for i, sql in enumerate(sqls)]
    slowest = max(statements, key=lambda s: s["ms"])
    return {"queries": counts[0], "statements": statements, "slowest": {**slowest, "plan": query_plan(slowest["sql"])}}


def measure(client: Any, read: str, url: str, requests: int, warmup: int, check: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    for _ in range(warmup):
        check(get_json(client, url))
    samples: list[float] = []
    for _ in range(requests):
        start = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: {response.status_code}")
    return {
        "read": read,
        "url": url,
        "requests": requests,
        "p50_ms": round(percentile(samples, 50), 3),
        "p95_ms": round(percentile(samples, 95), 3),
        "min_ms": round(min(samples), 3),
        "max_ms": round(max(samples), 3),
        **capture(client, url),
    }


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"unexpected response: {what}")


def child(backend: str, scale: str, requests: int, warmup: int) -> dict[str, Any]:
    started = time.perf_counter()
    django_setup()
    from django.core.management import call_command
    from django.db import connection
    from rest_framework.test import APIClient

    call_command("migrate", verbosity=0)
    migrate_s = time.perf_counter() - started
    sizes = SCALES[scale]
    token, session_id, seconds = fill(sizes)
    big = sizes[-1]
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    # Another user's, so the sessions list reads what it read before.
    started_branched = time.perf_counter()
    brancher = get_user_model().objects.create_user("histbench-branched", password=None)
    branched_id, branched_length = fill_branched(brancher, big, datetime.now(UTC) - timedelta(days=400))
    branched_client = APIClient()
    branched_client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=brancher).key}")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    seconds["insert_s"] += time.perf_counter() - started_branched
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    half = big // 2

    def sessions_ok(page: dict[str, Any]) -> None:
        first = page["results"][0]
        expect(len(page["results"]) == min(PAGE_SIZE, len(sizes)), f"{len(page['results'])} sessions on the first page")
        expect(first["id"] == str(session_id) and first["message_count"] == big, f"first session {first}")

    def newest_ok(page: dict[str, Any]) -> None:
        seqs = [m["seq"] for m in page["results"]]
        expect(page["total_count"] == big and seqs == list(range(big - PAGE_SIZE + 1, big + 1)), f"newest page {seqs[:1]}..{seqs[-1:]}")

    def deep_ok(page: dict[str, Any]) -> None:
        seqs = [m["seq"] for m in page["results"]]
        expect(seqs == list(range(half + 1, half + PAGE_SIZE + 1)), f"deep page {seqs[:1]}..{seqs[-1:]}")

    def branched_newest_ok(page: dict[str, Any]) -> None:
        seqs = [m["seq"] for m in page["results"]]
        expect(page["total_count"] == branched_length and len(seqs) == PAGE_SIZE and seqs[-1] == big, f"branched newest page {seqs[:1]}..{seqs[-1:]}")
        expect(all(m["parent"] == p["id"] for p, m in zip(page["results"], page["results"][1:], strict=False)), "a branch page is a chain")

    branched_half = branched_length // 2

    def branched_deep_ok(page: dict[str, Any]) -> None:
        expect(len(page["results"]) == PAGE_SIZE and page["total_count"] == branched_length, "branched deep page size")
        expect(all(m["parent"] == p["id"] for p, m in zip(page["results"], page["results"][1:], strict=False)), "a branch page is a chain")

    deep_url = deep_cursor_url(client, session_id, half)
    branched_deep_url = deep_cursor_url(branched_client, branched_id, branched_half)
    reads = [
        measure(client, "sessions list", "/api/v1/sessions/", requests, warmup, sessions_ok),
        measure(client, "newest page", f"/api/v1/sessions/{session_id}/messages/?from=end", requests, warmup, newest_ok),
        measure(client, "deep page", deep_url, requests, warmup, deep_ok),
        measure(branched_client, "branched newest page", f"/api/v1/sessions/{branched_id}/messages/?from=end", requests, warmup, branched_newest_ok),
        measure(branched_client, "branched deep page", branched_deep_url, requests, warmup, branched_deep_ok),
    ]
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()" if connection.vendor == "postgresql" else "SELECT 'SQLite ' || sqlite_version()")
        version = cursor.fetchone()[0]
    return {
        "backend": backend,
        "scale": scale,
        "database": version,
        "sessions": len(sizes),
        "messages": sum(sizes),
        "big_session_messages": big,
        "branched_session": {"messages": big, "forks": FORKS, "active_branch": branched_length},
        "fill": {"migrate_s": round(migrate_s, 2), "insert_s": round(seconds["insert_s"], 2), "analyze_s": round(seconds["analyze_s"], 2)},
        "reads": reads,
        # Over the last minute, this process included (about 1; PostgreSQL's backend adds to it): other work on the machine shows as more.
        "load_1m": round(os.getloadavg()[0], 2),
    }


# Parent: databases, child processes, the report ---------------------------------------


@contextlib.contextmanager
def sqlite_database() -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="histbench-"))
    try:
        yield f"sqlite:///{folder / 'db.sqlite3'}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def pg_database(admin_url: str) -> Iterator[str]:
    import psycopg
    from psycopg import sql

    name = f"histbench_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        parts = urlsplit(admin_url)
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def run_child(backend: str, scale: str, db_url: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "CHANNEL_PREFIX", "CACHE_PREFIX", "DJANGO_ALLOW_ASYNC_UNSAFE"}}
    env.update(
        DATABASE_URL=db_url,
        DJANGO_SETTINGS_MODULE="chatproject.settings",
        SECRET_KEY=secrets.token_urlsafe(50),
        DEBUG="0",
        CHAT_SKIP_STARTUP_SWEEP="1",
        ALLOWED_HOSTS="testserver",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    command = [PYTHON, str(Path(__file__).resolve()), "--child", f"{backend}:{scale}", "--requests", str(args.requests), "--warmup", str(args.warmup)]
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{backend} {scale}: the child process exited with {done.returncode}")
    line = next((line for line in done.stdout.splitlines() if line.startswith(MARK)), None)
    if line is None:
        raise RuntimeError(f"{backend} {scale}: no result from the child process:\n{done.stdout[-2000:]}")
    return json.loads(line[len(MARK) :])


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def results_table(runs: list[dict[str, Any]]) -> str:
    rows = [[r["backend"], r["scale"], read["read"], f"{read['p50_ms']:.2f}", f"{read['p95_ms']:.2f}", str(read["queries"])] for r in runs for read in r["reads"]]
    return markdown(["backend", "scale", "read", "p50 ms", "p95 ms", "queries"], rows)


def sql_table(runs: list[dict[str, Any]]) -> str:
    """Where the time of a request is spent in the database: all its statements, and the slowest one."""
    rows = []
    for r in runs:
        for read in r["reads"]:
            slowest = read["slowest"]
            head = shorten(slowest["sql"])
            head = head if len(head) <= 90 else head[:87] + "…"
            rows.append([r["backend"], r["scale"], read["read"], f"{sum(s['ms'] for s in read['statements']):.2f}", f"{slowest['ms']:.2f}", f"`{head}`"])
    return markdown(["backend", "scale", "read", "SQL ms per request", "slowest statement ms", "slowest statement"], rows)


def fill_table(runs: list[dict[str, Any]]) -> str:
    rows = [
        [
            r["backend"],
            r["scale"],
            str(r["sessions"]),
            f"{r['messages']:,}",
            f"{r['fill']['migrate_s']:.1f}",
            f"{r['fill']['insert_s']:.1f}",
            f"{r['fill']['analyze_s']:.1f}",
            f"{r['load_1m']:.2f}",
        ]
        for r in runs
    ]
    return markdown(["backend", "scale", "sessions", "messages", "migrate s", "insert s", "VACUUM ANALYZE s", "load avg after reads"], rows)


def ratio_table(runs: list[dict[str, Any]]) -> str:
    p50 = {(r["backend"], r["scale"], read["read"]): read["p50_ms"] for r in runs for read in r["reads"]}
    rows = []
    for backend in dict.fromkeys(r["backend"] for r in runs):
        for read in READS:
            base = p50.get((backend, "1k", read))
            if not base:
                continue
            cells = [f"{p50[(backend, s, read)] / base:.1f}×" if (backend, s, read) in p50 else "—" for s in ("100k", "1M")]
            rows.append([backend, read, f"{base:.2f}", *cells])
    return markdown(["backend", "read", "1k p50 ms", "100k / 1k", "1M / 1k"], rows)


def slowest_statements(runs: list[dict[str, Any]]) -> str:
    largest = {r["backend"]: r for r in runs}  # runs come in the order of --scales; the last is the largest
    parts = []
    for backend, run in largest.items():
        for read in run["reads"]:
            s = read["slowest"]
            parts.append(
                f"{backend} {run['scale']} {read['read']} ({read['queries']} queries, slowest {s['ms']:.2f} ms in execute):\n  {shorten(s['sql'])}\n  plan:\n    "
                + shorten(s["plan"]).replace("\n", "\n    ")
            )
    return "\n\n".join(parts)


def shorten(text: str) -> str:
    """Long lists of quoted ids (`IN ('…', '…')`, `'{…,…}'::uuid[]`) as their count, for reading."""
    text = re.sub(r"\('[0-9a-f-]+'(?:::uuid)?(?:, '[0-9a-f-]+'(?:::uuid)?){3,}\)", lambda m: f"(<{m[0].count(',') + 1} ids>)", text)
    return re.sub(r"'\{[0-9a-f-]+(?:,[0-9a-f-]+){3,}\}'", lambda m: f"'{{<{m[0].count(',') + 1} ids>}}'", text)


def code_state() -> dict[str, Any]:
    """The commit and a fingerprint of the uncommitted changes (tracked diff and untracked files): what was measured."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    digest = hashlib.sha256(git("diff", "HEAD").encode())
    untracked = sorted(git("ls-files", "--others", "--exclude-standard").splitlines())
    for name in untracked:
        digest.update(name.encode())
        with contextlib.suppress(OSError):
            digest.update((ROOT / name).read_bytes())
    changed = sorted(line[3:] for line in git("status", "--porcelain").splitlines())
    return {"commit": git("rev-parse", "HEAD").strip(), "changed_files": changed, "changes_sha256": digest.hexdigest()}


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    import django
    import psycopg

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "psycopg": psycopg.__version__,
    }


def choices(value: str, allowed: list[str] | tuple[str, ...], what: str) -> list[str]:
    picked = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in picked if v not in allowed]
    if unknown or not picked:
        raise SystemExit(f"--{what}: choose among {', '.join(allowed)} (got {value!r})")
    return picked


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backends", default="sqlite,pg", help="comma-separated: sqlite, pg")
    parser.add_argument("--scales", default="1k,100k,1M", help="comma-separated: 1k, 100k, 1M")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per read (at least 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests before them")
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432/postgres", help="where to CREATE and DROP the histbench_ database")
    parser.add_argument("--json", type=Path, help="also write the results, SQL and plans included, to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        backend, scale = args.child.split(":")
        print(MARK + json.dumps(child(backend, scale, args.requests, args.warmup)), flush=True)
        return 0

    # SIGTERM ends the run like Ctrl-C: the child is killed and its database removed (the `finally` blocks run).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    backends = choices(args.backends, BACKENDS, "backends")
    scales = choices(args.scales, list(SCALES), "scales")
    args.requests = max(30, args.requests)
    started = time.monotonic()
    code = code_state()
    runs: list[dict[str, Any]] = []
    for backend in backends:
        for scale in scales:
            print(f"{backend} {scale}: {sum(SCALES[scale]):,} messages in {len(SCALES[scale])} sessions …", flush=True)
            database = sqlite_database() if backend == "sqlite" else pg_database(args.pg_url)
            with database as db_url:
                run = run_child(backend, scale, db_url, args)
            runs.append(run)
            fill = run["fill"]
            print(
                f"  fill {fill['insert_s']:.1f} s (+ migrate {fill['migrate_s']:.1f} s, VACUUM ANALYZE {fill['analyze_s']:.1f} s); load average {run['load_1m']} after the reads",
                flush=True,
            )

    print("\nFill (apart from the measurements):\n")
    print(fill_table(runs))
    print(f"\nReads ({args.requests} timed requests each after {args.warmup} warm-up; queries = SQL statements of one request):\n")
    print(results_table(runs))
    print(f"\nSQL inside one request (each statement's median time in cursor.execute over {CAPTURED_REQUESTS} requests):\n")
    print(sql_table(runs))
    print("\np50 against 1k:\n")
    print(ratio_table(runs))
    print("\nSlowest statement of each read at the largest scale, with its plan:\n")
    print(slowest_statements(runs))
    if code_state() != code:
        print("\nWARNING: the working tree changed during the run; the scales may have measured different code.")
    result = {
        "command": " ".join([Path(PYTHON).name, *sys.argv]),
        "code": code,
        "machine": machine(),
        "databases": sorted({r["database"] for r in runs}),
        "requests": args.requests,
        "warmup": args.warmup,
        "seconds": round(time.monotonic() - started, 1),
        "runs": runs,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nWrote {args.json}")
    print(f"Total {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
