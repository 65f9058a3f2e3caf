"""Full-text search at scale: `GET /api/v1/search/` over 1,000,000 messages of one user, on SQLite and PostgreSQL.

For each backend a fresh database (SQLite in a temporary file, PostgreSQL in a throwaway
`histbench_<random>` database, as bench/history.py makes them) is migrated and filled with one
user's messages, 100 sessions of 10,000 (`--messages` changes the total), plus a second user with
a tenth as many, all older (never found in the first user's answers, nor the first user's in
theirs: each answer is checked). The text is made of words drawn from a
vocabulary of 20,000 made-up words with Zipf's law (word k about 1/k as often as the first), 12
words a message, seeded, so every run searches the same text.

The index is kept as the product keeps it: on SQLite the FTS5 table's triggers index each row as
it is inserted; on PostgreSQL the GIN index is dropped for the bulk load and built again (what
the migration does on an existing history), then `VACUUM ANALYZE`. Fill and index times are
printed apart from the searches.

Each search goes through the real API in-process (DRF's `APIClient`, `DEBUG=0`): 3 warm-up
requests, then at least `--requests` timed ones (p50 and p95 of the whole request, in ms), for:

- a rare word (rank 15,000: a few hundred messages), a middling one (rank 300), the most common
  one (rank 1: in about two thirds of all messages), two words together, a prefix, and a word
  that is nowhere; each the first page (20 results), and the common word's last page
  (offset 1,000); then the second user's rare and common word.

    .venv/bin/python bench/search.py --backends sqlite,pg --json /tmp/search.json
"""

from __future__ import annotations

import argparse
import bisect
import importlib
import itertools
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from history import django_setup, insert_messages, percentile, pg_database, sqlite_database

ROOT = Path(__file__).resolve().parent.parent
MARK = "SEARCHBENCH "
VOCABULARY = 20_000
WORDS_PER_MESSAGE = 12
SESSION_SIZE = 10_000
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "za", "de", "po", "li", "ma", "te", "no", "gu"]


def word(rank: int) -> str:
    """The made-up word of a rank (1 = the most common): syllables spelling the number."""
    n, parts = rank, []
    while True:
        n, digit = divmod(n, len(SYLLABLES))
        parts.append(SYLLABLES[digit])
        if n == 0:
            break
    return "".join(parts) + "x"


SEARCHES = [
    ("rare word", {"q": word(15_000)}),
    ("middling word", {"q": word(300)}),
    ("common word", {"q": word(1)}),
    ("two words", {"q": f"{word(2)} {word(40)}"}),
    ("prefix", {"q": word(300)[:-2]}),
    ("no match", {"q": "zzzqqq"}),
    ("common, offset 1000", {"q": word(1), "offset": "1000"}),
]


# The second user (a tenth as many messages, all older than the first user's) searching their own.
OTHER = "other user: "
OTHER_SEARCHES = [(OTHER + "rare word", {"q": word(15_000)}), (OTHER + "common word", {"q": word(1)})]


def texts(seed: int) -> Any:
    rng = random.Random(seed)
    weights = list(itertools.accumulate(1 / k for k in range(1, VOCABULARY + 1)))
    top = weights[-1]
    while True:
        yield " ".join(word(bisect.bisect(weights, rng.random() * top) + 1) for _ in range(WORDS_PER_MESSAGE)).capitalize() + "."


def fill(owner_id: int, sessions: int, gen: Any) -> None:
    from sessions_app.models import ChatSession

    start = datetime.now(UTC) - timedelta(days=30)
    for _ in range(sessions):
        session = ChatSession.objects.create(owner_id=owner_id, seq=SESSION_SIZE, message_count=SESSION_SIZE)
        insert_messages(session.pk, SESSION_SIZE, start, lambda seq: next(gen))


def plan_of(client: Any, params: dict[str, str]) -> str:
    """EXPLAIN ANALYZE of the search's slowest statement, as the request ran it."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        client.get("/api/v1/search/", params)
    slowest = max(captured.captured_queries, key=lambda q: float(q["time"]))["sql"]
    setup = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("SET ")]
    prefix = "EXPLAIN (ANALYZE, BUFFERS) " if connection.vendor == "postgresql" else "EXPLAIN QUERY PLAN "
    with transaction.atomic(), connection.cursor() as cursor:
        for statement in setup:
            cursor.execute(statement)
        cursor.execute(prefix + slowest)
        return "\n".join(" | ".join(str(v) for v in row) for row in cursor.fetchall())


def child(backend: str, messages: int, requests: int, warmup: int, explain: bool = False) -> dict[str, Any]:
    django_setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    search_migration = importlib.import_module("chat.migrations.0008_search")  # the index's own statement

    call_command("migrate", verbosity=0)
    users = get_user_model().objects
    me, other = users.create_user("searchbench"), users.create_user("someone-else")
    gen = texts(seed=42)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX chat_message_search")
    # The other user's messages are the older ones: their search must get past the big user's newer matches.
    fill(other.pk, max(1, messages // SESSION_SIZE // 10), gen)
    fill(me.pk, messages // SESSION_SIZE, gen)
    seconds["insert_s"] = time.perf_counter() - started
    started = time.perf_counter()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(search_migration.PG_INDEX)
            cursor.execute("VACUUM ANALYZE")
    seconds["index_s"] = time.perf_counter() - started
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=me).key}")
    small = APIClient()
    small.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=other).key}")
    others = {str(s) for s in other.chat_sessions.values_list("pk", flat=True)}
    mine = {str(s) for s in me.chat_sessions.values_list("pk", flat=True)}
    reads = []
    for name, params in SEARCHES + OTHER_SEARCHES:
        who, foreign = (small, mine) if name.startswith(OTHER) else (client, others)
        times: list[float] = []
        count = 0
        for i in range(warmup + requests):
            t = time.perf_counter()
            response = who.get("/api/v1/search/", params)
            elapsed = (time.perf_counter() - t) * 1000
            body = response.json()
            assert response.status_code == 200, body
            assert not any(hit["session"]["id"] in foreign for hit in body["results"]), "another user's message was found"
            count = len(body["results"])
            if i >= warmup:
                times.append(elapsed)
        read = {"search": name, "params": params, "results": count, "p50_ms": round(statistics.median(times), 1), "p95_ms": round(percentile(times, 95), 1)}
        if explain:
            read["plan"] = plan_of(who, params)
        reads.append(read)
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()" if connection.vendor == "postgresql" else "SELECT 'SQLite ' || sqlite_version()")
        version = cursor.fetchone()[0]
    return {
        "backend": backend, "database": version, "messages": messages, "fill": {k: round(v, 1) for k, v in seconds.items()},
        "reads": reads, "load_1m": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backends", default="sqlite,pg")
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages of the searching user (a multiple of 10,000)")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json")
    parser.add_argument("--explain", action="store_true", help="print the plan of each search's slowest statement")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(MARK + json.dumps(child(args.child, args.messages, args.requests, args.warmup, args.explain)), flush=True)
        return 0
    runs = []
    for backend in args.backends.split(","):
        with sqlite_database() if backend == "sqlite" else pg_database(args.pg_url) as url:
            env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "CHANNEL_PREFIX", "CACHE_PREFIX"}}
            env.update(DATABASE_URL=url, DJANGO_SETTINGS_MODULE="chatproject.settings", SECRET_KEY=secrets.token_urlsafe(50), DEBUG="0",
                       CHAT_SKIP_STARTUP_SWEEP="1", ALLOWED_HOSTS="testserver", LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
            command = [sys.executable, __file__, "--child", backend, "--messages", str(args.messages), "--requests", str(args.requests), "--warmup", str(args.warmup)]
            command += ["--explain"] if args.explain else []
            started = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=7200)
            line = next((x for x in done.stdout.splitlines() if x.startswith(MARK)), None)
            if done.returncode != 0 or line is None:
                print(done.stdout[-3000:])
                raise SystemExit(f"{backend}: the child process failed ({done.returncode})")
            run = json.loads(line[len(MARK):])
            took = time.perf_counter() - started
            print(f"{backend}: filled {run['messages']:,} messages in {run['fill']['insert_s']} s, index {run['fill']['index_s']} s; whole run {took:.0f} s", flush=True)
            runs.append(run)
    print(f"\n## Search at {args.messages:,} messages of one user ({datetime.now().strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores)\n")
    print("| search | " + " | ".join(f"{r['backend']} p50 / p95 ms (results)" for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for i, (name, params) in enumerate(SEARCHES + OTHER_SEARCHES):
        cells = [f"{r['reads'][i]['p50_ms']} / {r['reads'][i]['p95_ms']} ({r['reads'][i]['results']})" for r in runs]
        print(f"| {name} (`{params['q']}`{', offset ' + params['offset'] if 'offset' in params else ''}) | " + " | ".join(cells) + " |")
    print("\n" + "; ".join(f"{r['database'].split(' on ')[0]}: load {r['load_1m']}" for r in runs))
    for r in runs:
        for read in r["reads"]:
            if "plan" in read:
                print(f"\n### {r['backend']}: {read['search']}\n```\n{read['plan']}\n```")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"messages": args.messages, "runs": runs}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
