"""The deployment of deploy/, for real: nginx in front of two daphne processes on PostgreSQL + Redis.

Each test starts its own fleet (tests/fleet.py: nginx with deploy's configuration, daphne with the
systemd unit's command line, a Redis server of its own) and stops it, failing or not. Clients
are real (the `websockets` package, HTTP through nginx); what they assembled is checked against
the saved rows. bench/rolling_restart.py times the same rolling restart and prints what people saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chat.models import Message
from sessions_app.services import session_create
from tests.conftest import on_postgres
from tests.fleet import DEPLOY, NGINX, Fleet, Person, Watcher, missing, nginx_config
from tests.live import ROOT
from tests.ws import db, token_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.process, pytest.mark.fleet]

SLOW = 40  # pieces of a reply (/slow 40, DEMO_SLOW_DELAY apart)


def expected(n: int = SLOW) -> str:
    return "".join(f"chunk {i} " for i in range(1, n + 1))


def _unavailable(reason: str) -> None:
    # .ci/run sets CHAT_REQUIRE_FLEET: there, a missing piece is a failure, not a skip.
    if os.environ.get("CHAT_REQUIRE_FLEET") == "1":
        pytest.fail(f"the fleet tests must run here: {reason}")
    pytest.skip(reason)


@pytest.fixture
def make_fleet() -> Iterator[Any]:
    """`make_fleet(env={...})` starts nginx, two daphne processes and a Redis server; all stop after the test."""
    if not on_postgres():
        _unavailable("needs DATABASE_URL on PostgreSQL (run by .ci/run)")
    if (reason := missing()) is not None:
        _unavailable(reason)
    fleets: list[Fleet] = []

    def make(env: dict[str, str] | None = None) -> Fleet:
        fleet = Fleet(env={"DEMO_SLOW_DELAY": "0.05", **(env or {})})
        fleets.append(fleet)
        return fleet.start()

    yield make
    for fleet in fleets:
        fleet.stop()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers


def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **(headers or {})}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def until(condition: Callable[[], bool], running: asyncio.Future, fleet: Fleet, timeout: float = 180) -> None:
    """Wait for `condition` while the clients run; their failure, or a fleet that stopped moving, ends the test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if running.done():
            running.result()  # raises what a client raised
            raise AssertionError("the clients stopped early")
        if loop.time() > deadline:
            raise AssertionError(f"no progress within {timeout:.0f}s\n{fleet.logs()}")
        await asyncio.sleep(0.1)


def metric_value(body: str, series: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(series + " "))


def saved(session_ids: list[str]) -> dict[str, list[tuple[str, str, str, str]]]:
    """Each session's messages as (role, status, content, client_id), in seq order."""
    rows = Message.objects.filter(session_id__in=session_ids).order_by("session_id", "seq").values_list("session_id", "role", "status", "content", "client_id")
    out: dict[str, list[tuple[str, str, str, str]]] = {s: [] for s in session_ids}
    for session_id, role, status, content, client_id in rows:
        out[str(session_id)].append((role, status, content, client_id or ""))
    return out


def test_the_deployment_configuration_is_valid_nginx_with_its_tls_server() -> None:
    """deploy/nginx/chat.conf as a host would have it (snippet in place, certificates), checked by `nginx -t`."""
    if not Path(NGINX).exists() or shutil.which("openssl") is None:
        _unavailable("needs nginx and openssl")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=chat.example.com",
             "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem")],
            check=True, capture_output=True,
        )
        (directory / "chat-locations.conf").write_text((DEPLOY / "nginx" / "chat-locations.conf").read_text())
        site = (DEPLOY / "nginx" / "chat.conf").read_text()
        site = site.replace("/etc/nginx/snippets/chat-locations.conf", str(directory / "chat-locations.conf"))
        site = site.replace("/etc/letsencrypt/live/chat.example.com/fullchain.pem", str(directory / "cert.pem"))
        site = site.replace("/etc/letsencrypt/live/chat.example.com/privkey.pem", str(directory / "key.pem"))
        (directory / "chat.conf").write_text(site)
        temp = "".join(f"{kind}_temp_path {directory / kind}; " for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (directory / "nginx.conf").write_text(
            f"error_log {directory / 'error.log'};\nevents {{}}\nhttp {{ include /etc/nginx/mime.types; {temp}include {directory / 'chat.conf'}; }}\n"
        )
        result = subprocess.run(
            [NGINX, "-t", "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(directory / "nginx.conf"), "-g", f"pid {directory / 'nginx.pid'};"],
            capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr
        assert "syntax is ok" in result.stderr and "[emerg]" not in result.stderr
        # The fleet's own nginx.conf takes this upstream, its servers pointed elsewhere with their parameters kept.
        fleet_conf = nginx_config(directory=directory, port=1, upstreams=[2, 3], static_root=directory)
        assert "least_conn;" in fleet_conf and "8001" not in fleet_conf
        assert "server 127.0.0.1:2 max_fails=0;\n    server 127.0.0.1:3 max_fails=0;" in fleet_conf


async def test_through_nginx_static_files_come_from_disk_metrics_stay_inside_and_forwarded_headers_are_nginx_s(user, make_fleet):  # type: ignore[no-untyped-def]
    token = await db(token_for, user)
    for title in ("one", "two"):
        await db(session_create, owner=user, title=title)
    fleet = await asyncio.to_thread(make_fleet, {"LOGIN_FAILURE_LIMIT": "3"})
    process = fleet.servers[0].url
    auth = {"Authorization": f"Token {token}"}

    status, body, _ = await asyncio.to_thread(get, f"{fleet.url}/static/chat/app.js")
    assert status == 200 and body == (ROOT / "chat" / "static" / "chat" / "app.js").read_bytes()
    assert (await asyncio.to_thread(get, f"{process}/static/chat/app.js"))[0] == 404  # SERVE_STATIC=0: nginx served it
    assert (await asyncio.to_thread(get, f"{fleet.url}/metrics"))[0] == 404
    status, body, _ = await asyncio.to_thread(get, f"{process}/metrics")
    assert status == 200 and b"chat_replies_interrupted_total" in body
    status, body, _ = await asyncio.to_thread(get, f"{fleet.url}/healthz")
    assert (status, json.loads(body)["status"]) == (200, "ok")

    # X-Forwarded-Proto is nginx's, whatever a client claims: links keep the scheme and the port the client used.
    status, body, _ = await asyncio.to_thread(get, f"{fleet.url}/api/v1/sessions/?limit=1", {**auth, "X-Forwarded-Proto": "https"})
    assert status == 200 and json.loads(body)["next"].startswith(f"{fleet.url}/api/v1/sessions/?")
    # From the proxy it is believed (TRUSTED_PROXIES=1): behind TLS, links are https.
    status, body, _ = await asyncio.to_thread(get, f"{process}/api/v1/sessions/?limit=1", {**auth, "X-Forwarded-Proto": "https"})
    assert json.loads(body)["next"].startswith(f"https://127.0.0.1:{fleet.servers[0].port}/")

    # X-Forwarded-For: the address counted is the one nginx saw, so a forged header dodges no lockout.
    codes = [
        await asyncio.to_thread(post, f"{fleet.url}/api/v1/auth/token/", {"username": "alice", "password": "wrong"}, {"X-Forwarded-For": f"203.0.113.{i}"})
        for i in range(4)
    ]
    assert codes == [400, 400, 429, 429], codes  # the third failure from one address locks it out (django-axes)


async def connect_to(fleet: Fleet, session_id: str, token: str, upstream: str | None = None, avoid: str | None = None) -> tuple[Person, str]:
    """A socket through nginx on the process `upstream` (or any but `avoid`): nginx chooses, so connect until it does."""
    for _ in range(50):
        person = Person(fleet.ws_url, session_id, token)
        await person.connect()
        landed = next(iter(person.seen.upstreams))
        if (upstream is None or landed == upstream) and landed != avoid:
            return person, landed
        await person.close()
    raise AssertionError(f"nginx never sent a socket to {upstream or f'another process than {avoid}'}")


async def test_a_socket_on_one_process_sees_resumes_and_cancels_replies_generated_on_the_other(user, make_fleet):  # type: ignore[no-untyped-def]
    token = await db(token_for, user)
    session = str((await db(session_create, owner=user)).pk)
    fleet = await asyncio.to_thread(make_fleet)
    writer, here = await connect_to(fleet, session, token)
    reader, there = await connect_to(fleet, session, token, avoid=here)
    assert here != there

    assert writer.ws is not None
    await writer.ws.send(json.dumps({"type": "user_message", "content": "/slow 200"}))
    while True:  # the reader, on the other process, sees the reply start and stream
        frame = await reader.recv()
        if frame["type"] == "message.delta" and len(reader.seen.text[frame["message_id"]]) > 60:
            reply_id = frame["message_id"]
            break
    before = reader.seen.text[reply_id]

    # The reader's connection drops; it comes back through nginx, to the process that does not generate the reply.
    assert reader.ws is not None
    await reader.ws.close()
    reader.ws = None
    while True:
        back = Person(fleet.ws_url, session, token)
        back.seen.text[reply_id] = before  # the same tab: what it had before the drop
        await back.connect()
        if next(iter(back.seen.upstreams)) == there:
            break
        await back.close()
    while len(back.seen.text.get(reply_id, "")) < len(before) + 80:
        await back.recv()
    assert expected(200).startswith(back.seen.text[reply_id])

    # It stops the reply, which runs in the other process.
    assert back.ws is not None
    await back.ws.send(json.dumps({"type": "cancel", "message_id": reply_id}))
    while reply_id not in back.seen.ended:
        await back.recv()
    while reply_id not in writer.seen.ended:
        await writer.recv()
    row = await db(lambda: Message.objects.get(pk=reply_id))
    assert row.status == "cancelled" and row.worker_id == ""
    assert back.seen.ended[reply_id]["status"] == writer.seen.ended[reply_id]["status"] == "cancelled"
    assert back.seen.text[reply_id] == writer.seen.text[reply_id] == row.content == back.seen.ended[reply_id]["content"]
    assert len(row.content) < len(expected(200)) and expected(200).startswith(row.content)
    for person in (writer, reader, back):
        await person.close()


async def run_people(people: list[Person], *, enough: asyncio.Event) -> None:
    """Each person sends turns (/slow SLOW) one after the other, reading a while between them, until `enough` is set.

    The pauses are random, so that at any moment some replies start, some stream and some end.
    """

    async def live(person: Person) -> None:
        await asyncio.sleep(random.uniform(0, 2))
        while not enough.is_set():
            await person.turn(f"/slow {SLOW}")
            await asyncio.sleep(random.uniform(0.2, 1.5))

    await asyncio.gather(*(live(p) for p in people))


def check_people(people: list[Person], watchers: list[Watcher], sessions: list[str]) -> dict[str, int]:
    """Every turn saved once, every reply complete with its full text, and every socket's text the saved one."""
    rows = saved(sessions)
    totals = {"turns": 0, "followed": 0, "watched": 0, "watched_whole": 0}
    for person, session in zip(people, sessions, strict=True):
        messages = rows[session]
        turns = len(person.seen.replies)
        assert len(messages) == 2 * turns, (session, len(messages), turns)
        assert [(m[0], m[1], m[2]) for m in messages] == [("user", "complete", f"/slow {SLOW}"), ("assistant", "complete", expected())] * turns
        assert len({m[3] for m in messages[::2]}) == turns  # one message per client_id: a resend made nothing new
        for reply in person.seen.replies:
            # Each reply was followed to its end on a socket (never learned only from a repeat's answer),
            # and the text assembled from snapshots and deltas, across reconnects, is the saved text.
            assert person.seen.ended[reply]["status"] == "complete"
            assert person.seen.text[reply] == expected(), (reply, person.seen.text.get(reply))
        assert person.seen.errors == []
        totals["turns"] += turns
        totals["followed"] += len(person.seen.replies)
    for watcher in watchers:
        for reply, text in watcher.seen.text.items():
            # Deltas by offset never make wrong text; what a late joiner's catch-up could not fill
            # (the reply ended meanwhile), its message.completed carries, as it always carries the full text.
            assert expected().startswith(text), (reply, text)
            if reply in watcher.seen.ended:
                assert watcher.seen.ended[reply]["content"] == expected()
                totals["watched"] += 1
                totals["watched_whole"] += text == expected()
    return totals


async def test_fifty_sessions_stream_through_nginx_while_both_processes_restart_one_after_the_other(user, make_user, make_fleet):  # type: ignore[no-untyped-def]
    token = await db(token_for, user)
    sessions = [str((await db(session_create, owner=user, title=f"s{i}")).pk) for i in range(50)]
    fleet = await asyncio.to_thread(make_fleet)
    people = [Person(fleet.ws_url, s, token) for s in sessions]
    watchers = [Watcher(fleet.ws_url, s, token) for s in sessions[:25]]
    enough, stop_watching = asyncio.Event(), asyncio.Event()
    running = asyncio.gather(run_people(people, enough=enough), *(w.watch(stop_watching) for w in watchers))
    try:
        await until(lambda: min(len(p.seen.replies) for p in people) >= 1, running, fleet)  # every session has streamed a reply
        restarts = []
        for index in range(len(fleet.servers)):
            restarts.append(await asyncio.to_thread(fleet.restart, index))
        done_before = [len(p.seen.replies) for p in people]
        # A turn each on the new processes.
        await until(lambda: all(len(p.seen.replies) > n for p, n in zip(people, done_before, strict=True)), running, fleet)
    finally:
        enough.set()
        stop_watching.set()
        await asyncio.wait_for(running, 120)
    for person in people + watchers:
        await person.close()

    assert [r.exit_code for r in restarts] == [0, 0], fleet.logs()
    totals = await db(check_people, people, watchers, sessions)
    assert not await db(lambda: Message.objects.exclude(status="complete").exists())
    closes = sum((p.seen.closes for p in people + watchers), start=Counter())
    assert set(closes) <= {4503}, closes  # the only close anyone saw: a draining process's
    assert closes[4503] >= 2  # each process, drained, closed its sockets
    # nginx always had a process to send a socket to: never a 502 while one of the two restarted.
    assert sum((p.seen.refused_handshakes for p in people + watchers), start=Counter()) == Counter()
    upstreams = {u for p in people for u in p.seen.upstreams}
    assert upstreams == {f"127.0.0.1:{s.port}" for s in fleet.servers}, upstreams
    assert totals["turns"] >= 100 and totals["watched"] > 0


async def test_redis_restarted_under_load_turns_go_on_sockets_recover_nothing_lost(user, make_fleet):  # type: ignore[no-untyped-def]
    token = await db(token_for, user)
    sessions = [str((await db(session_create, owner=user, title=f"r{i}")).pk) for i in range(20)]
    fleet = await asyncio.to_thread(make_fleet)
    people = [Person(fleet.ws_url, s, token) for s in sessions]
    # Steady tabs, half of them on the other process than their session's writer (nginx alternates).
    watchers = [Watcher(fleet.ws_url, s, token, drops=False) for s in sessions]
    enough, stop_watching = asyncio.Event(), asyncio.Event()
    running = asyncio.gather(run_people(people, enough=enough), *(w.watch(stop_watching) for w in watchers))
    def turns() -> int:
        return sum(len(p.seen.replies) for p in people)

    try:
        await until(lambda: min(len(p.seen.replies) for p in people) >= 1, running, fleet)
        before = turns()
        await asyncio.to_thread(fleet.redis.kill)
        await until(lambda: turns() >= before + 20, running, fleet)  # turns go on without Redis
        during = turns() - before
        await asyncio.to_thread(fleet.redis.start)
        await until(lambda: min(w.resyncs for w in watchers) >= 1, running, fleet)  # every socket got a fresh session.ready
        after = turns()
        await until(lambda: turns() >= after + 20, running, fleet)
        for server in fleet.servers:
            status, body, _ = await asyncio.to_thread(get, f"{server.url}/healthz")
            assert (status, json.loads(body)["channel_layer"]) == (200, "ok")
            # The outage was real for each process: frames for the other one were lost, and the link came back.
            metrics = (await asyncio.to_thread(get, f"{server.url}/metrics"))[1].decode()
            assert metric_value(metrics, 'chat_frames_dropped_total{reason="bus"}') > 0
            assert metric_value(metrics, "chat_bus_reconnects_total") >= 1
    finally:
        enough.set()
        stop_watching.set()
        await asyncio.wait_for(running, 120)
    for person in people + watchers:
        await person.close()

    assert during >= 20
    crossing = [w for w, p in zip(watchers, people, strict=True) if set(w.seen.upstreams) != set(p.seen.upstreams)]
    assert crossing  # tabs on the other process than their session's writer: they live on the bus alone
    totals = await db(check_people, people, watchers, sessions)
    assert not await db(lambda: Message.objects.exclude(status="complete").exists())
    assert all(not w.seen.closes for w in watchers)  # their sockets stayed open throughout
    assert totals["watched"] > 0
