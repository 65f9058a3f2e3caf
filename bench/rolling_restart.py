#!/usr/bin/env python
"""A rolling restart of a fleet under load: how long it takes, and what the people using it saw.

The fleet is the one deploy/ describes and tests/test_fleet.py checks (tests/fleet.py starts it):
nginx with deploy/nginx's configuration in front of two daphne processes started with the systemd
unit's command line, on PostgreSQL and a Redis server of its own. K people, each with a session
and a socket through nginx, send `/slow N` turns (pieces D ms apart) one after another with a
random pause of 0.2 to 1.5 s; W more tabs (one per session of the first W people) only watch,
and drop their connection every 0.3 to 2 s. Once every person has had a reply, the processes
are restarted one after the other as deploy/rolling-restart.sh does: SIGTERM, wait for the exit
(the drain), start a new process on the same port, wait for /healthz; then every person has one
more turn, on the new processes, and the run ends.

    .venv/bin/python bench/rolling_restart.py                 # K=50, W=25, N=40, D=50 ms
    .venv/bin/python bench/rolling_restart.py -k 200 -n 100 --json /tmp/rolling.jsonl

Needs PostgreSQL (`--pg`, default postgres://postgres@127.0.0.1:5432; a database
`bench_rolling_<pid>` is made, migrated and dropped), nginx and redis-server.

What it prints: each process's drain (SIGTERM to exit) and start (start to /healthz 200), the
whole rolling restart; then what people saw: turns, those that overlapped the restart, sockets
closed by a draining process (4503), messages refused by one (`unavailable`, sent again at once),
connection attempts nginx could not place yet, turn time (send to the reply's end) p50 and max
outside and during the restart. And what was lost: replies not `complete`, replies whose text
(assembled by the sender from snapshots and deltas across reconnects) differs from the saved
text, user messages saved more or less than once; watchers' assembled text that is not a prefix
of the saved text. All must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_database(pg: str) -> tuple[str, str]:
    import psycopg

    name = f"bench_rolling_{os.getpid()}"
    with psycopg.connect(f"{pg.rstrip('/')}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    return name, f"{pg.rstrip('/')}/{name}"


def drop_database(pg: str, name: str) -> None:
    import psycopg

    with psycopg.connect(f"{pg.rstrip('/')}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(opts: argparse.Namespace) -> dict:
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from chat.models import Message
    from sessions_app.services import session_create
    from tests.fleet import Fleet, Person, Watcher
    from tests.ws import db, token_for

    await db(call_command, "migrate", "--noinput", "-v", "0")
    user = await db(lambda: User.objects.create_user("bench", password="bench-Password-1"))
    token = await db(token_for, user)
    sessions = [str((await db(session_create, owner=user, title=f"s{i}")).pk) for i in range(opts.k)]
    fleet = Fleet(env={"DEMO_SLOW_DELAY": str(opts.d / 1000), "LOG_LEVEL": "WARNING"})
    await asyncio.to_thread(fleet.start)
    people = [Person(fleet.ws_url, s, token) for s in sessions]
    watchers = [Watcher(fleet.ws_url, s, token) for s in sessions[: opts.w]]
    enough, stop_watching = asyncio.Event(), asyncio.Event()
    prompt = f"/slow {opts.n}"

    async def live(person: Person) -> None:
        import random

        await asyncio.sleep(random.uniform(0, 2))
        while not enough.is_set():
            await person.turn(prompt)
            await asyncio.sleep(random.uniform(0.2, 1.5))

    async def wait(condition) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 600
        while not condition():
            if running.done():
                running.result()
            if time.monotonic() > deadline:
                raise RuntimeError("no progress in 600 s")
            await asyncio.sleep(0.1)

    running = asyncio.gather(*(live(p) for p in people), *(w.watch(stop_watching) for w in watchers))
    try:
        await wait(lambda: min(len(p.seen.replies) for p in people) >= 1)
        began = time.monotonic()
        restarts = []
        for index in range(len(fleet.servers)):
            restarts.append(await asyncio.to_thread(fleet.restart, index))
        ended = time.monotonic()
        done = [len(p.seen.replies) for p in people]
        await wait(lambda: all(len(p.seen.replies) > n for p, n in zip(people, done, strict=True)))
    finally:
        enough.set()
        stop_watching.set()
        try:
            await asyncio.wait_for(running, 300)
        finally:
            for person in people + watchers:
                await person.close()
            await asyncio.to_thread(fleet.stop)

    expected = "".join(f"chunk {i} " for i in range(1, opts.n + 1))

    def rows() -> dict[str, list[tuple[str, str, str, str]]]:
        out: dict[str, list[tuple[str, str, str, str]]] = {s: [] for s in sessions}
        for session_id, role, status, content, client_id in Message.objects.filter(session_id__in=sessions).order_by("session_id", "seq").values_list(
            "session_id", "role", "status", "content", "client_id"
        ):
            out[str(session_id)].append((role, status, content, client_id or ""))
        return out

    saved = await db(rows)
    by_id = {str(k): v for k, v in await db(lambda: list(Message.objects.filter(session_id__in=sessions, role="assistant").values_list("id", "content")))}
    not_complete = sum(1 for messages in saved.values() for m in messages if m[1] != "complete")
    mismatched = sum(1 for p in people for r in p.seen.replies if p.seen.text.get(r) != by_id.get(r))
    doubled_or_lost = sum(
        abs(len([m for m in saved[s] if m[0] == "user"]) - len(p.seen.replies)) + (len({m[3] for m in saved[s] if m[0] == "user"}) != len(p.seen.replies))
        for p, s in zip(people, sessions, strict=True)
    )
    wrong_watched = sum(1 for w in watchers for text in w.seen.text.values() if not expected.startswith(text))
    spans = [span for p in people for span in p.seen.spans]
    during = [end - start for start, end in spans if start < ended and end > began]
    outside = [end - start for start, end in spans if not (start < ended and end > began)]
    closes = sum((p.seen.closes for p in people + watchers), start=Counter())
    return {
        "kind": "run", "k": opts.k, "w": opts.w, "n": opts.n, "d_ms": opts.d,
        "restarts": [{"port": r.port, "drained_s": round(r.drained, 2), "started_s": round(r.started, 2), "exit_code": r.exit_code} for r in restarts],
        "rolling_restart_s": round(ended - began, 2),
        "turns": len(spans), "turns_during_restart": len(during),
        "closed_4503": closes.get(4503, 0), "closed_other": sum(v for c, v in closes.items() if c != 4503),
        "refused_unavailable": sum(p.seen.unavailable for p in people), "resent": sum(p.seen.resent for p in people),
        "connects_not_placed": sum(p.seen.failed_connects for p in people + watchers),
        "handshakes_refused_by_nginx": dict(sum((p.seen.refused_handshakes for p in people + watchers), start=Counter())),
        "turn_s": {
            "outside_p50": round(quantile(outside, 0.5), 2), "outside_max": round(max(outside, default=float("nan")), 2),
            "during_p50": round(quantile(during, 0.5), 2), "during_max": round(max(during, default=float("nan")), 2),
        },
        "ideal_turn_s": round((opts.n - 1) * opts.d / 1000, 2),
        "lost": {"not_complete": not_complete, "text_mismatch": mismatched, "messages_lost_or_doubled": doubled_or_lost, "watched_text_wrong": wrong_watched},
        "watched_replies_seen_ending": sum(len(w.seen.ended) for w in watchers),
        "errors": sum(len(p.seen.errors) for p in people),
    }


def report(result: dict) -> None:
    print(f"Rolling restart of 2 processes, K={result['k']} people (+{result['w']} watching tabs), /slow {result['n']} at {result['d_ms']} ms "
          f"(ideal turn {result['ideal_turn_s']} s)\n")
    print("| step | seconds |\n|---|---|")
    for i, r in enumerate(result["restarts"], 1):
        print(f"| process {i} (:{r['port']}) drained: SIGTERM to exit (code {r['exit_code']}) | {r['drained_s']:.2f} |")
        print(f"| process {i} started: start to /healthz 200 | {r['started_s']:.2f} |")
    print(f"| **rolling restart, both processes** | **{result['rolling_restart_s']:.2f}** |\n")
    t = result["turn_s"]
    lost = result["lost"]
    print("| what people saw | |\n|---|---|")
    print(f"| turns (of them overlapping the restart) | {result['turns']} ({result['turns_during_restart']}) |")
    print(f"| sockets closed by a draining process (4503), then reconnected | {result['closed_4503']} |")
    print(f"| sockets closed otherwise | {result['closed_other']} |")
    print(f"| messages refused (`unavailable`), sent again at once | {result['refused_unavailable']} (resent {result['resent']}) |")
    print(f"| connection attempts that failed, retried (of them answered by nginx itself, by status) | "
          f"{result['connects_not_placed']} ({result['handshakes_refused_by_nginx'] or 'none'}) |")
    print(f"| turn time p50 / max, outside the restart (s) | {t['outside_p50']:.2f} / {t['outside_max']:.2f} |")
    print(f"| turn time p50 / max, overlapping it (s) | {t['during_p50']:.2f} / {t['during_max']:.2f} |")
    print(f"| error frames | {result['errors']} |")
    print(f"| replies not complete / text differing from the saved / user messages lost or doubled | "
          f"{lost['not_complete']} / {lost['text_mismatch']} / {lost['messages_lost_or_doubled']} |")
    print(f"| watching tabs: replies seen ending / text not a prefix of the saved | {result['watched_replies_seen_ending']} / {lost['watched_text_wrong']} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", type=int, default=50, help="people (sessions), each sending turns")
    parser.add_argument("-w", type=int, default=None, help="watching tabs that drop and reconnect (default K/2)")
    parser.add_argument("-n", type=int, default=40, help="pieces of a reply (/slow N)")
    parser.add_argument("-d", type=int, default=50, help="ms between pieces")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server (a database is made and dropped)")
    parser.add_argument("--json", help="append the result as one JSON line to this file")
    opts = parser.parse_args()
    opts.w = opts.k // 2 if opts.w is None else opts.w

    from tests.fleet import missing

    if (reason := missing()) is not None:
        print(reason, file=sys.stderr)
        return 2
    name, url = make_database(opts.pg)
    try:
        os.environ.update(DATABASE_URL=url, DJANGO_SETTINGS_MODULE="chatproject.settings", CHAT_SKIP_STARTUP_SWEEP="1")
        os.environ.pop("REDIS_URL", None)
        import django

        django.setup()
        started = time.monotonic()
        result = asyncio.run(run(opts))
        result["wall_s"] = round(time.monotonic() - started, 1)
        report(result)
        if opts.json:
            with open(opts.json, "a") as out:
                out.write(json.dumps(result) + "\n")
        lost = result["lost"]
        return 1 if any(lost.values()) or result["errors"] else 0
    finally:
        from django.db import connections

        connections.close_all()
        from chat.engine import db as engine_db

        engine_db.close_connections()
        drop_database(opts.pg, name)


if __name__ == "__main__":
    raise SystemExit(main())
