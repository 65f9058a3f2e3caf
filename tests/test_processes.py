"""Turns across real daphne processes and a real client (the `websockets` package)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from chat.models import Message
from sessions_app.services import session_create
from tests.conftest import requires_postgres, requires_redis
from tests.ws import db, merge_text, token_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.process]


async def connect(server: Any, session_id: Any, token: str) -> websockets.ClientConnection:
    return await websockets.connect(
        f"{server.ws_url}/ws/sessions/{session_id}/", additional_headers={"Authorization": f"Token {token}"}
    )


async def recv(ws: websockets.ClientConnection, timeout: float = 15) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until(ws: websockets.ClientConnection, frame_type: str, where: Any = None, timeout: float = 30) -> list[dict]:
    frames = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await recv(ws, max(0.1, deadline - loop.time()))
        frames.append(frame)
        if frame["type"] == frame_type and (where is None or where(frame)):
            return frames


def expected_slow(n: int) -> str:
    return "".join(f"chunk {i} " for i in range(1, n + 1))


async def test_killed_server_leaves_user_message_and_interrupted_reply(user, daphne_server):  # type: ignore[no-untyped-def]
    token = await db(token_for, user)
    session = await db(session_create, owner=user)
    server = daphne_server(env={"DEMO_SLOW_DELAY": "0.05", "CHECKPOINT_INTERVAL": "0.5"})
    ws = await connect(server, session.pk, token)
    await recv(ws)  # session.ready
    await ws.send(json.dumps({"type": "user_message", "content": "/slow 200"}))
    frames = await until(ws, "message.delta", where=lambda f: f["offset"] > 100)
    reply_id = frames[-1]["message_id"]
    await asyncio.sleep(1.2)  # past a checkpoint
    server.kill()
    await ws.close()

    restarted = daphne_server(env={"CHECKPOINT_INTERVAL": "0.5"})
    rows = await db(lambda: list(Message.objects.filter(session=session).order_by("seq")))
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "interrupted")]
    assert rows[0].content == "/slow 200"
    reply = rows[1]
    assert str(reply.pk) == reply_id
    assert len(reply.content) > 100 and expected_slow(200).startswith(reply.content)
    assert reply.error

    ws = await connect(restarted, session.pk, token)
    ready = await recv(ws)
    assert ready["active"] == []
    await ws.close()


async def test_a_queued_message_whose_process_died_is_answered_by_another(user, daphne_server):  # type: ignore[no-untyped-def]
    token = await db(token_for, user)
    session = await db(session_create, owner=user)
    server = daphne_server(env={"DEMO_SLOW_DELAY": "0.05"})
    ws = await connect(server, session.pk, token)
    await recv(ws)  # session.ready
    await ws.send(json.dumps({"type": "user_message", "content": "/slow 400"}))
    await until(ws, "message.delta")
    await ws.send(json.dumps({"type": "user_message", "content": "after the crash", "on_busy": "enqueue"}))
    assert [q["content"] for q in (await until(ws, "queue.updated"))[-1]["queue"]] == ["after the crash"]
    server.kill()  # the reply dies with it; the queued message is in the database
    await ws.close()

    other = daphne_server()
    ws = await connect(other, session.pk, token)
    await recv(ws)
    # A sweep (at this server's start, or its heartbeat's) finds the dead process's reply, ends it, and the queue goes on here.
    answered = await until(ws, "message.completed", where=lambda f: f["message"]["role"] == "assistant" and f["message"]["status"] == "complete", timeout=60)
    reply = answered[-1]["message"]
    rows = await db(lambda: list(Message.objects.filter(session=session).order_by("seq")))
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "interrupted"), ("user", "complete"), ("assistant", "complete")]
    assert rows[2].content == "after the crash" and str(rows[3].pk) == reply["id"] and '"after the crash"' in reply["content"]
    assert rows[2].parent_id == rows[1].pk  # answered on the branch, after the interrupted reply
    await ws.close()


@requires_postgres
@requires_redis
async def test_two_processes_share_turns_and_mid_stream_snapshots(user, daphne_server):  # type: ignore[no-untyped-def]
    token = await db(token_for, user)
    session = await db(session_create, owner=user)
    a = daphne_server(env={"DEMO_SLOW_DELAY": "0.05"})
    b = daphne_server(env={"DEMO_SLOW_DELAY": "0.05"})

    # A socket on A sees a turn started on B.
    on_a = await connect(a, session.pk, token)
    on_b = await connect(b, session.pk, token)
    await recv(on_a)
    await recv(on_b)
    await on_b.send(json.dumps({"type": "user_message", "content": "hello from B"}))
    seen_on_a = await until(on_a, "message.completed")
    assert [f["message"]["role"] for f in seen_on_a if f["type"] == "message.created"] == ["user", "assistant"]
    final = seen_on_a[-1]["message"]
    assert final["status"] == "complete"
    assert merge_text("", seen_on_a, final["id"]) == final["content"]
    await on_a.close()

    # A socket opened on A while B streams gets the whole text: snapshot + catch-up + live deltas.
    await until(on_b, "message.completed")
    await on_b.send(json.dumps({"type": "user_message", "content": "/slow 60"}))
    started = await until(on_b, "message.delta", where=lambda f: f["offset"] > 80)
    reply_id = started[-1]["message_id"]
    late = await connect(a, session.pk, token)
    ready = await recv(late)
    assert [x["message_id"] for x in ready["active"]] == [reply_id]
    rest = await until(late, "message.completed", where=lambda f: f["message"]["id"] == reply_id)
    shown = merge_text(ready["active"][0]["content"], rest, reply_id)
    saved = await db(lambda: Message.objects.get(pk=reply_id))
    assert shown == saved.content == expected_slow(60)
    await late.close()
    await on_b.close()


async def test_approval_survives_server_restart_and_runs_once(user, daphne_server, webhook):  # type: ignore[no-untyped-def]
    token = await db(token_for, user)
    session = await db(session_create, owner=user)
    first = daphne_server()
    ws = await connect(first, session.pk, token)
    await recv(ws)
    await ws.send(json.dumps({"type": "user_message", "content": f'/tool webhook_post {{"url": "{webhook.url}", "payload": {{"x": 1}}}}'}))
    request = (await until(ws, "approval.requested"))[-1]
    first.kill()
    await ws.close()

    second = daphne_server()
    ws = await connect(second, session.pk, token)
    ready = await recv(ws)
    assert [(p["kind"], p["approval_id"]) for p in ready["pending"]] == [("approval", request["approval_id"])]
    await ws.send(json.dumps({"type": "hitl_decision", "approval_id": request["approval_id"], "decision": "approve"}))
    frames = await until(ws, "message.completed", where=lambda f: f["message"]["type"] == "text")
    assert '"status": 200' in frames[-1]["message"]["content"]
    assert webhook.bodies == [{"x": 1}]
    await ws.send(json.dumps({"type": "hitl_decision", "approval_id": request["approval_id"], "decision": "approve"}))
    assert (await until(ws, "error"))[-1]["code"] == "already_decided"
    assert webhook.bodies == [{"x": 1}]
    await ws.close()


async def test_sigterm_drains_running_replies_finish_new_messages_are_refused_sockets_close_with_4503(user, daphne_server):  # type: ignore[no-untyped-def]
    import http.client
    import socket
    import uuid

    from chat.models import Worker

    token = await db(token_for, user)
    session = await db(session_create, owner=user)
    server = daphne_server(env={"DEMO_SLOW_DELAY": "0.05", "SHUTDOWN_GRACE": "60", "LOG_FORMAT": "json"})
    ws = await connect(server, session.pk, token)
    await recv(ws)
    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)  # a balancer's open connection
    kept.request("GET", "/healthz")
    health = kept.getresponse()
    assert (health.status, json.loads(health.read())["status"]) == (200, "ok")
    await ws.send(json.dumps({"type": "user_message", "content": "/slow 60"}))
    frames = await until(ws, "message.delta", where=lambda f: f["offset"] > 20)
    reply_id = frames[-1]["message_id"]

    server.terminate()  # SIGTERM; the reply streams on
    refused_id = str(uuid.uuid4())
    await ws.send(json.dumps({"type": "user_message", "content": "one more", "client_id": refused_id, "request_id": "r1"}))
    frames += await until(ws, "error", where=lambda f: f.get("request_id") == "r1")
    assert frames[-1]["code"] == "unavailable"
    kept.request("GET", "/healthz")
    health = kept.getresponse()
    assert (health.status, json.loads(health.read())) == (503, {"status": "draining"})
    kept.close()
    with pytest.raises(ConnectionRefusedError):  # its port is closed: a balancer's next connection goes elsewhere
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()

    frames += await until(ws, "message.completed", where=lambda f: f["message"]["id"] == reply_id)
    assert frames[-1]["message"]["status"] == "complete"
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            frames.append(await recv(ws))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503
    assert server.wait() == 0
    reply = await db(lambda: Message.objects.get(pk=reply_id))
    assert (reply.status, reply.content) == ("complete", expected_slow(60))
    assert merge_text("", frames, reply_id) == reply.content
    assert await db(lambda: list(Message.objects.filter(session=session).values_list("role", "content"))) == [("user", "/slow 60"), ("assistant", expected_slow(60))]
    assert not await db(lambda: Worker.objects.filter(pid=server.proc.pid).exists())
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line["message"].startswith("Draining") and line["level"] == "INFO" for line in lines), lines[-5:]


async def test_sigterm_interrupts_what_outlives_the_grace_with_all_its_text(user, daphne_server):  # type: ignore[no-untyped-def]
    from chat.models import Worker

    token = await db(token_for, user)
    session = await db(session_create, owner=user)
    # Checkpoints effectively off: only the shutdown path can have saved the text.
    server = daphne_server(env={"DEMO_SLOW_DELAY": "0.05", "CHECKPOINT_INTERVAL": "600", "SHUTDOWN_GRACE": "1"})
    ws = await connect(server, session.pk, token)
    await recv(ws)
    await ws.send(json.dumps({"type": "user_message", "content": "/slow 400"}))
    frames = await until(ws, "message.delta", where=lambda f: f["offset"] > 100)
    reply_id = frames[-1]["message_id"]
    server.terminate()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            frames.append(await recv(ws))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503  # after the grace, before the interruption
    seen = merge_text("", frames, reply_id)
    assert server.wait() == 0
    reply = await db(lambda: Message.objects.get(pk=reply_id))
    assert reply.status == "interrupted" and reply.error
    assert len(reply.content) >= len(seen) and expected_slow(400).startswith(reply.content) and reply.content.startswith(seen)
    assert not await db(lambda: Worker.objects.filter(pid=server.proc.pid).exists())


async def test_a_socket_that_does_not_read_gets_its_deltas_joined_and_loses_none(user, daphne_server):  # type: ignore[no-untyped-def]
    """A slow reader's frames wait at the server and its deltas join into fewer frames; once it reads, the text is whole."""
    import socket
    import urllib.request

    token = await db(token_for, user)
    session = await db(session_create, owner=user)
    server = daphne_server(env={"DEMO_SLOW_DELAY": "0.001", "STREAM_WINDOW": "0.001"})
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's buffer fills soon
    raw.connect(("127.0.0.1", server.port))
    slow = await websockets.connect(
        f"{server.ws_url}/ws/sessions/{session.pk}/", sock=raw, max_queue=1, max_size=None,
        additional_headers={"Authorization": f"Token {token}"},
    )
    await recv(slow)
    await slow.send(json.dumps({"type": "user_message", "content": "/slow 5000 " + "x" * 2000}))
    reply = await db(lambda: _wait_reply_ended(session.pk))  # generated and stored while nobody reads
    frames = await until(slow, "message.completed", where=lambda f: f["message"]["role"] == "assistant", timeout=60)
    deltas = [f for f in frames if f["type"] == "message.delta"]
    assert merge_text("", frames, str(reply.pk)) == reply.content == expected_slow(5000)
    assert all(f["offset"] == sum(len(d["delta"]) for d in deltas[:i]) for i, f in enumerate(deltas))
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    joined = next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith("chat_frames_coalesced_total "))
    assert len(deltas) < 4000, len(deltas)  # 5000 pieces, a frame each for a reader that keeps up
    assert joined > 0, "the held deltas were not joined"
    await slow.close()


def _wait_reply_ended(session_id):  # type: ignore[no-untyped-def]
    import time

    for _ in range(600):
        reply = Message.objects.filter(session_id=session_id, role="assistant").first()
        if reply is not None and reply.status != "streaming":
            return reply
        time.sleep(0.05)
    raise AssertionError("the reply never ended")


async def test_a_socket_that_sends_but_never_reads_is_closed_once_its_unsent_output_passes_the_limit(user, daphne_server):  # type: ignore[no-untyped-def]
    import socket
    import urllib.request

    token = await db(token_for, user)
    session = await db(session_create, owner=user)
    server = daphne_server(env={"WS_MAX_UNSENT_BYTES": "300000", "WS_FRAMES_PER_SECOND": "100000", "WS_RESYNCS_PER_MINUTE": "10000000"})
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", server.port))
    hostile = await websockets.connect(
        f"{server.ws_url}/ws/sessions/{session.pk}/", sock=raw, max_queue=1, max_size=None,
        additional_headers={"Authorization": f"Token {token}"},
    )
    ready = await recv(hostile)
    assert ready["type"] == "session.ready"
    # Every resync asks for a session.ready it never reads (what grew the server by megabytes before).
    try:
        for _ in range(5000):
            await hostile.send('{"type": "resync"}')
    except websockets.ConnectionClosed:
        pass

    def too_far_behind() -> float:
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
            body = response.read().decode()
        return next(float(line.split()[1]) for line in body.splitlines() if line.startswith("chat_sockets_too_far_behind_total "))

    for _ in range(600):  # nothing is read meanwhile
        if too_far_behind() >= 1:
            break
        await asyncio.sleep(0.1)
    assert too_far_behind() == 1
    # Its connection is gone: what it reads now ends in a close (after whatever the kernel held).
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(hostile.recv(), timeout=30)
    # The server goes on: a reading socket of the same session works.
    fine = await connect(server, session.pk, token)
    assert (await recv(fine))["type"] == "session.ready"
    await fine.send(json.dumps({"type": "ping"}))
    assert (await recv(fine))["type"] == "pong"
    await fine.close()


@pytest.mark.parametrize("limit", [256 * 1024, 2 * 1024 * 1024])
async def test_the_frame_limit_holds_end_to_end_an_error_under_it_a_clean_1009_over_it(user, daphne_server, limit):  # type: ignore[no-untyped-def]
    token = await db(token_for, user)
    session = await db(session_create, owner=user)
    server = daphne_server(env={"WS_MAX_FRAME_BYTES": str(limit)})
    ws = await websockets.connect(
        f"{server.ws_url}/ws/sessions/{session.pk}/", max_size=None, compression=None,
        additional_headers={"Authorization": f"Token {token}"},
    )
    await recv(ws)
    # Just under the limit (above daphne's own 1 MiB default in the second case): read, and answered.
    await ws.send('{"type": "ping", "pad": "' + "x" * (limit - 40) + '"}')
    assert (await recv(ws))["type"] == "pong"
    await ws.send("x" * (limit - 10))
    assert (await recv(ws))["code"] == "invalid_json"
    # Over it: a clean close with 1009 (message too big), not a dropped connection.
    await ws.send('{"type": "ping", "pad": "' + "x" * limit + '"}')
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert await db(lambda: Message.objects.filter(session=session).count()) == 0
