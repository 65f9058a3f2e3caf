#!/usr/bin/env python
"""Capacity matrix: K concurrent chat turns against our server and a bare `websockets` server, in one run.

What it measures
----------------
One *turn* per client. K clients run at once, each with its own chat session: a client opens
``ws://127.0.0.1:PORT/ws/sessions/<id>/`` with ``Authorization: Token <key>``, waits for
``session.ready``, waits at one start barrier shared by all client processes, then sends
``{"type":"user_message","content":"/slow N","client_id":<uuid4>}`` at start + uniform(0, spread) s
and reads frames until the ``message.completed`` of the assistant reply. The demo provider streams
``/slow N`` as N pieces ("chunk 1 ", "chunk 2 ", ...), the first at once, then D ms apart; a server
may join several pieces into one ``message.delta`` frame.

The same turns run against:

- **bare**: a bare `websockets` asyncio server in this file (``--serve-bare PORT``): ``session.ready``
  on connect, then for ``/slow N`` two ``message.created`` frames, N ``message.delta`` frames (one per
  piece, each JSON-encoded once) D ms apart and ``message.completed``. No database, no framework:
  the machine's limit.
- **ours, SQLite**: one daphne process on a fresh SQLite file, no Redis.
- **ours, PostgreSQL + Redis**: one daphne process on a fresh ``capbench_<random>`` database and Redis.
- **ours, 2 procs**: two daphne processes on one PostgreSQL database and Redis. Client i's socket is on
  process i % 2. In the mixed run half the clients (alternating pairs) send their turn not over the
  socket but with ``POST /api/v1/messages/`` to the *other* process, so the reply is generated there
  and reaches the socket across Redis ("cross"); the others are "local". Two more runs, all local and
  all cross, give the CPU cost of the cross-process path per delta frame.

Every server of ours gets a fresh database (``migrate``, one user, a token, K sessions and 20 warm-up
sessions made in one ``manage.py shell -c``), is started with the environment of
``../shared/peers/bench_us.sh`` (``DEBUG=0 THROTTLE_WRITES=1000000/min WS_FRAMES_PER_SECOND=1000
DEMO_SLOW_DELAY=D/1000 DEMO_DELTA_DELAY=0 LOG_LEVEL=WARNING``), is warmed up with 20 untimed turns of
``/slow 50`` (the bare server too), and after the measured turns the database is asked (after up to 60 s
for replies still ``streaming``) how many assistant messages of the measured sessions are ``complete``.

Clients are minimal RFC 6455 clients on ``asyncio.Protocol`` (handshake with the Sec-WebSocket-Accept
check, unmasked server frames, masked client frames, ping -> pong, close), K of them spread over
``--procs`` OS processes, one event loop each; connects are ramped (``--ramp`` per second over all
processes, at most ``--connect-concurrency`` handshakes in flight per process). Every phase is bounded.

The matrix
----------
- point 1: K=500, N=200, D=20 ms: bare, ours SQLite, ours PostgreSQL+Redis.
- point 2: K=1000, N=200, D=20 ms: the same three.
- point 3: one stream at zero delay: K=1, N=5000, D=0, spread 0: the same three; pieces/s and its ratio to bare.
- point 4: the two-process runs (mixed, all local, all cross) at K=500, N=200, D=20 ms.

``-k`` overrides K of points 1, 2 and 4; ``-d`` and ``--spread`` override D and the spread of points
1, 2 and 4 (point 3 is K=1, D=0, spread 0 by definition); ``-n`` overrides N of every point.

Run it (the full matrix takes a long time and the whole machine; small runs to try it)::

    .venv/bin/python bench/capacity.py                              # the full matrix
    .venv/bin/python bench/capacity.py --only 1 -k 20 -n 50         # point 1, small
    .venv/bin/python bench/capacity.py --only 3 -n 500              # the zero-delay stream, shorter
    .venv/bin/python bench/capacity.py --only 1,4 --repeats 2 --json /tmp/capacity.jsonl

The columns
-----------
- **point / server / K / N/D**: the configuration (r2, r3: the repeat round when ``--repeats`` > 1).
- **ok/failed**: turns that were ok, and the others (reasons counted below the table). A turn is ok when
  the assistant's ``message.completed`` arrived, all N pieces came, every delta's ``offset`` was the
  length of the text so far (a repeat with a lower offset is dropped; a gap fails the turn), and the
  text put together from the deltas equals the completed message's content (and ``chunk 1 ... chunk N``).
- **ttfd p50/p99 ms**: send of the user message to the first ``message.delta`` of the reply.
- **turn p50 s**: send to ``message.completed`` (ideal: (N-1) x D); **x bare**: ours / bare in the same round.
- **lag p99 ms**: for piece i the ideal arrival is send + (i-1) x D; the p99 over all pieces of
  (arrival of the frame carrying it - ideal).
- **pieces/frame**: pieces received / delta frames received (how much the server coalesced).
- **server CPU µs/piece**: utime+stime (``/proc/<pid>/stat``) of the server process(es) over the turn
  phase, per piece received, and its ratio to bare in the same round; Redis is not in it (see the
  JSON and the cross-process cost).
- **client µs/piece**: CPU of the client processes over the turn phase, per piece.
- **pieces/s**: point 3 only, N / turn time, and its ratio to bare.
- **x bare** of point 4 rows: point 1's bare run of the same round when K, N and D are the same; "-" otherwise.
  The two rows of the mixed run ("2 procs, local" and "2 procs, cross") share one run: CPU and DB are the run's.
- **DB**: assistant messages of the measured sessions that are ``complete`` / K.

Then the checks, PASS/FAIL: point 1: every turn ok, turn p50 <= 1.15 x bare, ttfd p99 <= 250 ms,
DB complete = K; point 2: every turn ok, DB complete = K (lag reported only); point 3: server CPU per
piece <= 2 x bare (point 1's runs of the same round) and zero-delay pieces/s >= 0.6 x bare; point 4:
every turn ok in both groups, DB complete = K, and the cross-process cost printed:
(CPU of both daphne processes + redis-server in the all-cross run - the same in the all-local run) /
delta frames delivered in the all-cross run, in µs. It includes the one REST POST of each cross turn (its
cost per turn is printed too), so it means most at the default N=200.

CPU comes in clock ticks (10 ms with CLK_TCK=100): at small K and N the µs/piece figures are coarse.
Daphne runs with its default verbosity, so it writes an access log line per connect and request (not per frame).
On a 2-core machine the clients share the cores with the servers: compare within one run, not across days.

``--json PATH`` appends one JSON object per run (``"kind": "run"``) and one with the checks
(``"kind": "summary"``) per invocation. The daphne logs of a run that failed (or logged errors) are
kept under ``--logs`` (default ``$TMPDIR/capbench-logs``). Exit code 0 whatever the checks say; 2 when
a run could not be carried out (a server did not start, a setup step failed), 130 when interrupted.
Everything binds to 127.0.0.1; servers, temporary folders, databases and Redis keys are removed on
exit, also on Ctrl+C and SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import functools
import hashlib
import json
import math
import multiprocessing as mp
import os
import queue
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
_VENV_PY = ROOT / ".venv" / "bin" / "python"
SERVER_PY = str(_VENV_PY if _VENV_PY.exists() else Path(sys.executable))
CLK_TCK = os.sysconf("SC_CLK_TCK")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PIECE = "chunk "
SLOW = re.compile(r"^/slow(?:\s+(\d+))?(?:\s|$)")
WARM_TURNS = 20
WARM_N = 50
MEASURED_TITLE = "capbench"
WARM_TITLE = "capbench-warm"
MARKER = "CAPBENCH_JSON "

Row = dict[str, Any]
# (gid, session id, socket port, POST port or 0, group)
Spec = tuple[int, str, int, int, str]
# (gid, group, failure reason or None, ttfd ms, turn ms, pieces, frames, repeats, foreign frames, POST ms)
TurnResult = tuple[int, str, str | None, float | None, float | None, int, int, int, int, float | None]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ============================================================== the bare server
def serve_bare(port: int, delay_ms: float) -> None:
    """The machine's limit: a bare `websockets` server that answers `/slow N` like the demo provider."""
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    delay = delay_ms / 1000.0

    def encode(frame: dict[str, Any]) -> str:
        return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))

    async def turn(ws: ServerConnection, session: str, content: str, client_id: Any) -> None:
        slow = SLOW.match(content.strip())
        n = min(max(int(slow.group(1) or 30), 1), 5000) if slow else 1
        user_id, reply_id = str(uuid.uuid4()), str(uuid.uuid4())
        user = {"id": user_id, "session": session, "role": "user", "content": content, "status": "complete", "client_id": client_id}
        reply: dict[str, Any] = {"id": reply_id, "session": session, "role": "assistant", "content": "", "status": "streaming", "reply_to": user_id}
        await ws.send(encode({"type": "message.created", "message": user}))
        await ws.send(encode({"type": "message.created", "message": reply}))
        parts: list[str] = []
        offset = 0
        for i in range(1, n + 1):
            if i > 1:
                await asyncio.sleep(delay)
            piece = f"chunk {i} " if slow else "ok "
            await ws.send(encode({"type": "message.delta", "message_id": reply_id, "offset": offset, "delta": piece}))
            parts.append(piece)
            offset += len(piece)
        reply.update(content="".join(parts), status="complete")
        await ws.send(encode({"type": "message.completed", "message": reply}))

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        session = path.strip("/").rsplit("/", 1)[-1]
        try:
            await ws.send(encode({"type": "session.ready", "session": {"id": session}, "last_seq": 0, "active": [], "pending": []}))
            async for raw in ws:
                try:
                    frame = json.loads(raw)
                except ValueError:
                    await ws.send(encode({"type": "error", "code": "invalid_json", "detail": "not JSON"}))
                    continue
                typ = frame.get("type") if isinstance(frame, dict) else None
                if typ == "user_message":
                    await turn(ws, session, str(frame.get("content", "")), frame.get("client_id"))
                elif typ == "ping":
                    await ws.send('{"type":"pong"}')
                else:
                    await ws.send(encode({"type": "error", "code": "unknown_type", "detail": str(typ)}))
        except ConnectionClosed:
            pass

    async def main() -> None:
        async with serve(handler, "127.0.0.1", port, compression=None, backlog=2048, max_size=1 << 20):
            loop = asyncio.get_running_loop()
            stop: asyncio.Future[None] = loop.create_future()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
            print(f"bare server pid={os.getpid()} on 127.0.0.1:{port} D={delay_ms:g} ms", flush=True)
            await stop

    asyncio.run(main())


# ============================================================== the client
class TurnError(Exception):
    """Ends a connect or a turn; the message is the failure reason."""


class WsConn(asyncio.Protocol):
    """A minimal RFC 6455 client connection: cheap per frame, so the clients steal little CPU from the server."""

    def __init__(self, host: str, path: str, headers: dict[str, str]) -> None:
        key = base64.b64encode(os.urandom(16))
        self.expected_accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode("latin-1")
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.is_open = False
        self.lost = False
        self.close_sent = False
        self.fragments: list[bytes] | None = None
        self.on_message: Callable[[bytes, float], None] | None = None
        self.on_close: Callable[[str], None] | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.handshake.done():
            self.handshake.set_exception(TurnError("connect:closed"))
        if not self.gone.done():
            self.gone.set_result(None)
        if self.on_close is not None:
            self.on_close("closed")

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buf += data
        try:
            if not self.is_open and not self._read_handshake():
                return
            self._read_frames(now)
        except TurnError as exc:
            self._abort(str(exc))
        except Exception as exc:  # a bug or a malformed frame: ends this connection, not the process
            self._abort(f"client:{type(exc).__name__}")

    # -- parsing
    def _abort(self, reason: str) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(TurnError(reason))
        if self.on_close is not None:
            self.on_close(reason)
        if self.transport is not None:
            self.transport.close()

    def _read_handshake(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                raise TurnError("handshake:too_long")
            return False
        head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 101:
            raise TurnError(f"handshake:{status}")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        if headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in headers.get("connection", "").lower():
            raise TurnError("handshake:no_upgrade")
        if headers.get("sec-websocket-accept") != self.expected_accept:
            raise TurnError("handshake:bad_accept")
        if headers.get("sec-websocket-extensions"):
            raise TurnError("handshake:unasked_extension")
        self.is_open = True
        self.handshake.set_result(None)
        return True

    def _read_frames(self, now: float) -> None:
        buf = self.buf
        while True:
            size = len(buf)
            if size < 2:
                return
            b0, b1 = buf[0], buf[1]
            if b1 & 0x80:
                raise TurnError("protocol:masked_server_frame")
            if b0 & 0x70:
                raise TurnError("protocol:rsv_bits")
            length, pos = b1 & 0x7F, 2
            if length == 126:
                if size < 4:
                    return
                length, pos = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if size < 10:
                    return
                length, pos = int.from_bytes(buf[2:10], "big"), 10
            end = pos + length
            if size < end:
                return
            payload = bytes(buf[pos:end])
            del buf[:end]
            opcode, fin = b0 & 0x0F, b0 & 0x80
            if opcode >= 0x8:
                if not fin or length > 125:
                    raise TurnError("protocol:bad_control_frame")
                if opcode == 0x9:
                    self.send(0xA, payload)
                elif opcode == 0x8:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    if not self.close_sent:
                        self.close_sent = True
                        self.send(0x8, payload[:2])
                    if self.on_close is not None:
                        self.on_close(f"closed:{code}")
                    if self.transport is not None:
                        self.transport.close()
                    return
                elif opcode != 0xA:
                    raise TurnError("protocol:bad_opcode")
                continue
            if opcode == 0x0:
                if self.fragments is None:
                    raise TurnError("protocol:stray_continuation")
                self.fragments.append(payload)
                if not fin:
                    continue
                payload, self.fragments = b"".join(self.fragments), None
            elif opcode in (0x1, 0x2):
                if self.fragments is not None:
                    raise TurnError("protocol:interleaved_message")
                if not fin:
                    self.fragments = [payload]
                    continue
            else:
                raise TurnError("protocol:bad_opcode")
            if self.on_message is not None:
                self.on_message(payload, now)

    # -- sending
    def send(self, opcode: int, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        n = len(data)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        body = (int.from_bytes(data, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big") if n else b""
        self.transport.write(head + mask + body)

    async def aclose(self, timeout: float = 2.0) -> None:
        if self.transport is None:
            return
        if not self.lost and not self.close_sent:
            self.close_sent = True
            self.send(0x8, (1000).to_bytes(2, "big"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.gone), timeout)
        self.transport.close()


class Client:
    """One session, one socket, one turn."""

    def __init__(self, spec: Spec, cfg: dict[str, Any]) -> None:
        self.gid, self.session, self.port, self.post_port, self.group = spec
        self.cfg = cfg
        self.n: int = cfg["n"]
        self.pace: float = cfg["d_ms"] / 1000.0
        self.conn: WsConn | None = None
        self.connected = False
        self.reason: str | None = None
        self.phase = "open"
        self.waiter: asyncio.Future[None] | None = None
        self.t_send = 0.0
        self.t_first: float | None = None
        self.t_done: float | None = None
        self.parts: list[str] = []
        self.length = 0
        self.pieces = 0
        self.frames = 0
        self.repeats = 0
        self.foreign = 0
        self.gap = False
        self.reply_id: str | None = None
        self.final: dict[str, Any] | None = None
        self.post_ms: float | None = None
        self.lag = array("d")

    def _settle(self, exc: BaseException | None) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def on_close(self, reason: str) -> None:
        self._settle(TurnError(reason))

    def on_message(self, payload: bytes, now: float) -> None:
        msg = json.loads(payload)
        if not isinstance(msg, dict):
            return
        typ = msg.get("type")
        if self.phase == "done":
            return
        if typ == "message.delta":
            if self.phase == "turn":
                self._delta(msg, now)
        elif typ == "error":
            self._settle(TurnError(f"error:{msg.get('code')}"))
        elif self.phase == "open":
            if typ == "session.ready":
                self._settle(None)
        elif typ == "message.created":
            message = msg.get("message") or {}
            if message.get("role") == "assistant" and self.reply_id is None:
                self.reply_id = message.get("id")
        elif typ == "message.completed":
            message = msg.get("message") or {}
            if message.get("role") == "assistant" and (self.reply_id is None or message.get("id") == self.reply_id):
                self.final = message
                self.t_done = now
                self._settle(None)

    def _delta(self, msg: dict[str, Any], now: float) -> None:
        mid = msg.get("message_id")
        if self.reply_id is None:
            self.reply_id = mid
        elif mid != self.reply_id:
            self.foreign += 1
            return
        self.frames += 1
        if self.t_first is None:
            self.t_first = now
        offset = msg.get("offset")
        delta = msg.get("delta") or ""
        if not isinstance(offset, int) or offset > self.length:
            self.gap = True  # kept, so the text shows what arrived
        elif offset < self.length:
            self.repeats += 1
            new = offset + len(delta) - self.length
            if new <= 0:
                return
            delta = delta[len(delta) - new :]
        self.parts.append(delta)
        self.length += len(delta)
        count = delta.count(PIECE)
        if count:
            base, pace, since = self.pieces, self.pace, now - self.t_send
            for j in range(count):
                self.lag.append((since - (base + j) * pace) * 1000.0)
            self.pieces += count

    async def open(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        for attempt in range(cfg["connect_retries"] + 1):
            try:
                await asyncio.wait_for(self._open(loop), cfg["open_timeout"])
                self.connected, self.reason = True, None
                return
            except TimeoutError:
                self.reason = "connect:timeout"
            except TurnError as exc:
                self.reason = str(exc)
            except OSError as exc:
                self.reason = f"connect:{type(exc).__name__}"
            self.drop()
            if attempt < cfg["connect_retries"]:
                await asyncio.sleep(0.25 * (attempt + 1))

    async def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        path = f"/ws/sessions/{self.session}/"
        self.waiter = loop.create_future()
        _, conn = await loop.create_connection(lambda: WsConn(f"127.0.0.1:{self.port}", path, self.cfg["headers"]), "127.0.0.1", self.port)
        self.conn = conn
        conn.on_close = self.on_close
        conn.on_message = self.on_message
        await conn.handshake
        await self.waiter

    def drop(self) -> None:
        for fut in (self.waiter, self.conn.handshake if self.conn is not None else None):
            if fut is not None:
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled():
                    fut.exception()  # retrieved: no "exception was never retrieved" noise
        if self.conn is not None:
            self.conn.on_close = None
            if self.conn.transport is not None:
                self.conn.transport.close()
            self.conn = None

    async def run_turn(self, at: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        if self.conn is None or self.conn.lost:
            self.reason = "closed_before_turn"
            return
        self.reason = None
        self.waiter = loop.create_future()
        self.phase = "turn"
        post: asyncio.Task[None] | None = None
        if self.post_port:
            body = json.dumps({"session": self.session, "content": self.cfg["content"]}).encode()
            request = (
                f"POST /api/v1/messages/ HTTP/1.1\r\nHost: 127.0.0.1:{self.post_port}\r\nAuthorization: Token {self.cfg['token']}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body
            self.t_send = time.monotonic()
            post = asyncio.create_task(self._post(request))
        else:
            frame = json.dumps({"type": "user_message", "content": self.cfg["content"], "client_id": str(uuid.uuid4())}).encode()
            self.t_send = time.monotonic()
            self.conn.send(0x1, frame)
        try:
            await asyncio.wait_for(self.waiter, self.cfg["turn_timeout"])
        except TimeoutError:
            self.reason = "timeout"
        except TurnError as exc:
            self.reason = str(exc)
        self.phase = "done"  # whatever arrives later (after a timeout) is not this turn's
        if post is not None:
            try:
                await asyncio.wait_for(post, 15)
            except TimeoutError:
                self.reason = self.reason or "post:timeout"
        if self.reason is None:
            self.reason = self._check()

    def _check(self) -> str | None:
        text = "".join(self.parts)
        final = self.final or {}
        if self.gap:
            return "gap"
        if text != final.get("content"):
            return "wrong_text"
        if self.pieces < self.n:
            return "missing_pieces"
        if text != self.cfg["expected"]:
            return "wrong_text"
        if final.get("status") != "complete":
            return f"status:{final.get('status')}"
        return None

    async def _post(self, request: bytes) -> None:
        status = 0
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.post_port)
            try:
                writer.write(request)
                line = await reader.readline()
                await reader.read()  # Connection: close; the body is not needed
            finally:
                writer.close()
            status = int(line.split()[1])
        except (OSError, ValueError, IndexError) as exc:
            self._settle(TurnError(f"post:{type(exc).__name__}"))
            return
        self.post_ms = (time.monotonic() - self.t_send) * 1000.0
        if status != 201:
            self._settle(TurnError(f"post:{status}"))

    def result(self) -> TurnResult:
        ttfd = (self.t_first - self.t_send) * 1000.0 if self.t_first is not None and self.t_send else None
        dur = (self.t_done - self.t_send) * 1000.0 if self.t_done is not None and self.t_send else None
        reason = self.reason if self.connected or self.reason else "connect:unknown"
        return (self.gid, self.group, reason, ttfd, dur, self.pieces, self.frames, self.repeats, self.foreign, self.post_ms)


# ============================================================== client processes
async def _worker_main(widx: int, specs: list[Spec], cfg: dict[str, Any], ready_q: Any, go: Any, start_val: Any, done_q: Any, state: dict[str, bool]) -> dict[str, Any]:
    clients = [Client(spec, cfg) for spec in specs]
    sem = asyncio.Semaphore(cfg["connect_concurrency"])

    async def open_one(client: Client) -> None:
        await asyncio.sleep(max(0.0, cfg["connect_at"] + client.gid / cfg["ramp"] - time.monotonic()))
        async with sem:
            await client.open()

    t_open = time.monotonic()
    opening = [asyncio.create_task(open_one(c)) for c in clients]
    if opening:
        _, pending = await asyncio.wait(opening, timeout=cfg["connect_phase_s"])
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for c in clients:
        if not c.connected:
            c.drop()
            c.reason = c.reason or "connect:phase_timeout"
    open_s = time.monotonic() - t_open
    ready_q.put((widx, sum(c.connected for c in clients)))
    state["ready"] = True

    loop = asyncio.get_running_loop()
    got = await loop.run_in_executor(None, go.wait, cfg["barrier_s"])
    cpu0 = time.process_time()
    if got:
        start = start_val.value
        rnd = random.Random(cfg["seed"] * 1000 + widx)
        turns = [asyncio.create_task(c.run_turn(start + rnd.uniform(0.0, cfg["spread"]))) for c in clients if c.connected]
        if turns:
            _, pending = await asyncio.wait(turns, timeout=cfg["spread"] + cfg["turn_timeout"] + 20)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    else:
        for c in clients:
            if c.connected:
                c.reason = "no_start_signal"
    client_cpu = time.process_time() - cpu0
    done_q.put(widx)
    state["done"] = True

    closing = [asyncio.create_task(c.conn.aclose()) for c in clients if c.conn is not None]
    if closing:
        await asyncio.wait(closing, timeout=5)
    lags: dict[str, array] = {}
    for c in clients:
        lags.setdefault(c.group, array("d")).extend(c.lag)
    return {"turns": [c.result() for c in clients], "lags": lags, "cpu_s": client_cpu, "open_s": open_s}


def _worker(widx: int, specs: list[Spec], cfg: dict[str, Any], ready_q: Any, go: Any, start_val: Any, done_q: Any, out_q: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cleans up and ends us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    state = {"ready": False, "done": False}
    try:
        res = asyncio.run(_worker_main(widx, specs, cfg, ready_q, go, start_val, done_q, state))
    except BaseException as exc:  # report, never leave the parent waiting
        res = {"fatal": f"{type(exc).__name__}: {exc}", "turns": [], "lags": {}, "cpu_s": 0.0, "open_s": 0.0}
        if not state["ready"]:
            ready_q.put((widx, 0))
        if not state["done"]:
            done_q.put(widx)
    out_q.put((widx, res))


@dataclass
class LoadResult:
    turns: list[TurnResult]
    lags: dict[str, array]
    client_cpu_s: float
    cpu_s: dict[str, float | None]
    wall_s: float
    connected: int
    open_s: float
    errors: list[str]


def _collect(q: Any, count: int, timeout: float, workers: list[Any]) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        try:
            got.append(q.get(timeout=0.25))
        except queue.Empty:
            if not any(w.is_alive() for w in workers) and q.empty():
                break
    return got


def proc_cpu(pids: list[int]) -> float | None:
    """utime+stime of these processes (all their threads), in seconds; None when one is gone."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            return None
        fields = stat[stat.rfind(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def redis_pids() -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/comm") as f:
                    if f.read().strip() == "redis-server":
                        pids.append(int(name))
            except OSError:
                continue
    return pids


def run_load(specs: list[Spec], cfg: dict[str, Any], procs: int, cpu_pids: dict[str, list[int]]) -> LoadResult:
    """K clients in P processes: connect (ramped), one barrier, the turns; CPU of cpu_pids over the turn phase."""
    ctx = mp.get_context("fork")
    nprocs = max(1, min(procs, len(specs)))
    ready_q, done_q, out_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
    go, start_val = ctx.Event(), ctx.Value("d", 0.0)
    cfg = dict(cfg, connect_at=time.monotonic() + 0.3)
    workers = []
    for w in range(nprocs):
        p = ctx.Process(target=_worker, args=(w, specs[w::nprocs], cfg, ready_q, go, start_val, done_q, out_q), daemon=True)
        p.start()
        workers.append(p)
        CLEANUP.workers.append(p)
    try:
        ready = _collect(ready_q, nprocs, cfg["connect_phase_s"] + 20, workers)
        connected = sum(c for _, c in ready)
        cpu0 = {label: proc_cpu(pids) for label, pids in cpu_pids.items()}
        t0 = time.monotonic()
        start_val.value = time.monotonic() + 0.3
        go.set()
        _collect(done_q, len(ready), cfg["spread"] + cfg["turn_timeout"] + 40, workers)
        wall = time.monotonic() - t0
        cpu: dict[str, float | None] = {}
        for label, pids in cpu_pids.items():
            after, before = proc_cpu(pids), cpu0[label]
            cpu[label] = after - before if after is not None and before is not None else None
        outs = [res for _, res in _collect(out_q, nprocs, 60, workers)]
    except BaseException:  # interrupted: the client processes ignore SIGINT, end them now
        for p in workers:
            if p.is_alive():
                p.terminate()
        raise
    finally:
        for p in workers:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            with contextlib.suppress(ValueError):
                CLEANUP.workers.remove(p)
    turns = [t for r in outs for t in r["turns"]]
    seen = {t[0] for t in turns}
    turns += [(s[0], s[4], "client_process_lost", None, None, 0, 0, 0, 0, None) for s in specs if s[0] not in seen]
    lags: dict[str, array] = {}
    for r in outs:
        for group, values in r["lags"].items():
            lags.setdefault(group, array("d")).extend(values)
    return LoadResult(
        turns=turns, lags=lags, client_cpu_s=sum(r["cpu_s"] for r in outs), cpu_s=cpu, wall_s=wall, connected=connected,
        open_s=max((r["open_s"] for r in outs), default=0.0), errors=[r["fatal"] for r in outs if "fatal" in r],
    )


# ============================================================== statistics
def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return None
    return values[max(0, math.ceil(q / 100.0 * len(values)) - 1)]


def summarize(res: LoadResult, group: str | None) -> dict[str, Any]:
    sel = [t for t in res.turns if group is None or t[1] == group]
    reasons = Counter(t[2] for t in sel if t[2] is not None)
    ttfd = sorted(t[3] for t in sel if t[3] is not None)
    dur = sorted(t[4] for t in sel if t[4] is not None)
    posts = sorted(t[9] for t in sel if t[9] is not None)
    lag = sorted(x for g, values in res.lags.items() if group is None or g == group for x in values)
    pieces, frames = sum(t[5] for t in sel), sum(t[6] for t in sel)
    return {
        "turns": len(sel), "ok": len(sel) - sum(reasons.values()), "failed": sum(reasons.values()), "reasons": dict(reasons),
        "ttfd_ms_p50": pct(ttfd, 50), "ttfd_ms_p99": pct(ttfd, 99),
        "turn_s_p50": None if not dur else pct(dur, 50) / 1000.0, "turn_s_p99": None if not dur else pct(dur, 99) / 1000.0,  # type: ignore[operator]
        "lag_ms_p50": pct(lag, 50), "lag_ms_p99": pct(lag, 99), "lag_ms_max": lag[-1] if lag else None,
        "pieces": pieces, "frames": frames, "pieces_per_frame": pieces / frames if frames else None,
        "repeats": sum(t[7] for t in sel), "foreign_frames": sum(t[8] for t in sel), "post_ms_p50": pct(posts, 50),
    }


# ============================================================== servers and cleanup
class Cleanup:
    """Everything to undo: servers, client processes, folders, databases, Redis keys."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: list[Any] = []
        self.dirs: list[Path] = []
        self.dbs: list[str] = []
        self.redis: list[tuple[str, str]] = []
        self.admin_dsn = ""

    def run(self) -> None:
        for w in list(self.workers):
            with contextlib.suppress(Exception):
                if w.is_alive():
                    w.terminate()
                w.join(timeout=3)
        self.workers.clear()
        for p in list(self.procs):
            stop_proc(p)
        for db in list(self.dbs):
            drop_db(db)
        for url, prefix in list(self.redis):
            redis_cleanup(url, prefix)
        for d in list(self.dirs):
            remove_dir(d)


CLEANUP = Cleanup()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_proc(p: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
    with contextlib.suppress(ValueError):
        CLEANUP.procs.remove(p)


def remove_dir(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)
    with contextlib.suppress(ValueError):
        CLEANUP.dirs.remove(d)


def create_db(name: str) -> None:
    import psycopg

    with psycopg.connect(CLEANUP.admin_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    CLEANUP.dbs.append(name)


def drop_db(name: str) -> None:
    import psycopg

    try:
        with psycopg.connect(CLEANUP.admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
    except Exception as exc:
        log(f"could not drop database {name}: {exc}")
        return
    with contextlib.suppress(ValueError):
        CLEANUP.dbs.remove(name)


def redis_cleanup(url: str, prefix: str) -> None:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=10)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        client.close()
    except Exception as exc:
        log(f"could not delete Redis keys {prefix}*: {exc}")
        return
    with contextlib.suppress(ValueError):
        CLEANUP.redis.remove((url, prefix))


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout:.0f} s")


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_healthz(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daphne exited with {proc.returncode} before /healthz answered")
        try:
            with _NO_PROXY.open(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                if r.status == 200:
                    return
                last = str(r.status)
        except urllib.error.HTTPError as exc:
            last = str(exc.code)
        except (OSError, urllib.error.URLError) as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise RuntimeError(f"/healthz on {port} did not answer 200 within {timeout:.0f} s (last: {last})")


# The server's own account of where a turn's first words wait (chatproject.metrics), diffed over the
# measured phase: histogram name (and labels to match) -> short name in the table's notes.
BREAKDOWN = [
    ("chat_turn_start_seconds", {}, "turn start"),
    ("chat_db_queue_seconds", {"step": "turn_start_many"}, "start queue"),
    ("chat_db_step_seconds", {"step": "turn_start_many"}, "start step"),
    ("chat_first_delta_seconds", {}, "reply to 1st delta"),
    ("chat_batch_size", {"step": "turn_start_many"}, "batch"),
    ("chat_db_queue_seconds", {"step": "reply_finish_many"}, "finish queue"),
    ("chat_db_step_seconds", {"step": "reply_finish_many"}, "finish step"),
    ("chat_batch_size", {"step": "reply_finish_many"}, "finish batch"),
]


def scrape(port: int) -> dict[tuple[str, str, tuple[tuple[str, str], ...]], float]:
    """The histogram samples of /metrics: (family, sample name, labels) -> value. Empty when it cannot be read."""
    try:
        from prometheus_client.parser import text_string_to_metric_families

        with _NO_PROXY.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except Exception as exc:  # the breakdown is a note; the run goes on without it
        log(f"/metrics on {port} could not be read: {exc}")
        return {}
    out: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        for sample in family.samples:
            out[(family.name, sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def breakdown(before: list[dict], after: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and p99 (a bucket's upper bound) of each BREAKDOWN histogram over the phase, all server processes together."""
    result: dict[str, dict[str, float]] = {}
    for family, want, short in BREAKDOWN:
        buckets: dict[float, float] = {}
        total = count = 0.0
        for b, a in zip(before, after, strict=True):
            for key, value in a.items():
                name, sample, labels = key
                if name != family or any(dict(labels).get(k) != v for k, v in want.items()):
                    continue
                delta = value - b.get(key, 0.0)
                if sample.endswith("_bucket"):
                    le = float(dict(labels)["le"])
                    buckets[le] = buckets.get(le, 0.0) + delta
                elif sample.endswith("_sum"):
                    total += delta
                elif sample.endswith("_count"):
                    count += delta
        if not count:
            continue
        p99 = next((le for le in sorted(buckets) if buckets[le] >= 0.99 * count), math.inf)
        result[short] = {"mean": total / count, "p99_le": p99, "count": count}
    return result


def fmt_breakdown(parts: dict[str, dict[str, float]]) -> str:
    cells = []
    for short, v in parts.items():
        if short.endswith("batch"):
            cells.append(f"{short} {v['mean']:.1f} (p99 <= {v['p99_le']:g})")
        else:
            cells.append(f"{short} {1000 * v['mean']:.1f} ms (p99 <= {1000 * v['p99_le']:g})")
    return "; ".join(cells)


def start_spies(opts: Opts, label: str, procs: list[subprocess.Popen[bytes]]) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """With --py-spy: sample each server process over the measured phase (collapsed stacks, one file per process)."""
    if not opts.py_spy:
        return []
    opts.logs.mkdir(parents=True, exist_ok=True)
    spies = []
    for i, p in enumerate(procs):
        out = opts.logs / f"{re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-')}-{i}.txt"
        spy = subprocess.Popen([opts.py_spy, "record", "--pid", str(p.pid), "--rate", "97", "--format", "raw", "--nonblocking", *opts.py_spy_args, "-o", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        spies.append((spy, out))
    return spies


def stop_spies(spies: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    for spy, _ in spies:
        spy.send_signal(signal.SIGINT)
    for spy, out in spies:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
        log(f"py-spy samples in {out} (summarise: py-spy's raw format, one collapsed stack and its count per line)")


SETUP_SCRIPT = f"""
import json, os
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from sessions_app.models import ChatSession
user = get_user_model().objects.create_user("capbench")
token = Token.objects.create(user=user)
k, w = int(os.environ["CAPBENCH_K"]), int(os.environ["CAPBENCH_WARM"])
measured = ChatSession.objects.bulk_create([ChatSession(owner=user, title="{MEASURED_TITLE}") for _ in range(k)], batch_size=500)
warm = ChatSession.objects.bulk_create([ChatSession(owner=user, title="{WARM_TITLE}") for _ in range(w)], batch_size=500)
print("{MARKER}" + json.dumps({{"token": token.key, "sessions": [str(s.pk) for s in measured], "warm": [str(s.pk) for s in warm]}}))
"""

DB_CHECK_SCRIPT = f"""
import json, time
from collections import Counter
from chat.models import Message
deadline = time.monotonic() + 60
while Message.objects.filter(status="streaming").exists() and time.monotonic() < deadline:
    time.sleep(1)
measured = Message.objects.filter(session__title="{MEASURED_TITLE}")
print("{MARKER}" + json.dumps({{
    "assistant": dict(Counter(measured.filter(role="assistant").values_list("status", flat=True))),
    "user": measured.filter(role="user").count(),
    "streaming_left": Message.objects.filter(status="streaming").count(),
}}))
"""


def manage(env: dict[str, str], args: list[str], timeout: float, extra: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Run manage.py; the JSON after MARKER on stdout, if any."""
    proc = subprocess.run(
        [SERVER_PY, "manage.py", *args], cwd=ROOT, env={**env, **(extra or {})}, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, start_new_session=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"manage.py {args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            return dict(json.loads(line[len(MARKER) :]))
    return None


def server_env(d_ms: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL", "CHANNEL_PREFIX", "CACHE_PREFIX"}}
    env.update(
        DJANGO_SETTINGS_MODULE="chatproject.settings", DEBUG="0", SECRET_KEY=secrets.token_urlsafe(48)[:50], ALLOWED_HOSTS="127.0.0.1,localhost",
        THROTTLE_WRITES="1000000/min", WS_FRAMES_PER_SECOND="1000", DEMO_SLOW_DELAY=f"{d_ms / 1000.0:g}", DEMO_DELTA_DELAY="0",
        # One user runs all K turns: the per-user budgets are off, as THROTTLE_WRITES is raised.
        TURNS_PER_MINUTE="0", MAX_REPLIES_PER_USER="0", WS_MAX_SOCKETS_PER_USER="0",
        LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
    )
    return env


@dataclass
class Opts:
    procs: int
    ramp: float
    connect_concurrency: int
    turn_timeout: float | None
    redis_url: str
    pg_url: str
    logs: Path
    seed: int
    py_spy: str | None = None
    py_spy_args: tuple[str, ...] = ()


def load_cfg(opts: Opts, k: int, n: int, d_ms: float, spread: float, token: str) -> dict[str, Any]:
    open_timeout = 20.0
    return {
        "n": n, "d_ms": d_ms, "spread": spread, "content": f"/slow {n}", "token": token, "headers": {"Authorization": f"Token {token}"},
        "connect_concurrency": opts.connect_concurrency, "ramp": opts.ramp, "open_timeout": open_timeout, "connect_retries": 1,
        "connect_phase_s": 30.0 + 2.0 * k / opts.ramp + open_timeout, "barrier_s": 120.0 + 2.0 * k / opts.ramp,
        "turn_timeout": opts.turn_timeout or 60.0 + 3.0 * n * d_ms / 1000.0,
        "expected": "".join(f"{PIECE}{i} " for i in range(1, n + 1)), "seed": opts.seed,
    }


def scan_log(path: Path) -> tuple[list[str], int]:
    """(error lines, warning count) of a server log."""
    errors: list[str] = []
    warnings = 0
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return [], 0
    for line in text.splitlines():
        if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", line):
            errors.append(line.strip()[:300])
        elif "WARNING" in line:
            warnings += 1
    return errors, warnings


def keep_logs(opts: Opts, label: str, paths: list[Path]) -> str:
    dest = opts.logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-')}"
    dest.mkdir(parents=True, exist_ok=True)
    for p in paths:
        with contextlib.suppress(OSError):
            shutil.copy2(p, dest / p.name)
    return str(dest)


def make_row(point: int, rnd: int, server: str, group: str | None, k: int, n: int, d_ms: float, spread: float, res: LoadResult, cpu_labels: list[str]) -> Row:
    stats = summarize(res, group)
    all_pieces = sum(t[5] for t in res.turns)
    server_cpu = [res.cpu_s.get(label) for label in cpu_labels]
    server_cpu_s = None if any(c is None for c in server_cpu) else sum(c for c in server_cpu if c is not None)
    row: Row = {
        "kind": "run", "point": point, "round": rnd, "server": server, "group": group or "all", "k": k, "n": n, "d_ms": d_ms, "spread_s": spread,
        **stats, "connected": res.connected, "open_phase_s": res.open_s, "turn_phase_s": res.wall_s,
        "server_cpu_s": server_cpu_s, "server_cpu_per_proc_s": server_cpu, "redis_cpu_s": res.cpu_s.get("redis"),
        "us_per_piece": 1e6 * server_cpu_s / all_pieces if server_cpu_s is not None and all_pieces else None,
        "client_cpu_s": res.client_cpu_s, "client_us_per_piece": 1e6 * res.client_cpu_s / all_pieces if all_pieces else None,
        "run_pieces": all_pieces, "run_frames": sum(t[6] for t in res.turns), "worker_errors": res.errors,
    }
    turn = row["turn_s_p50"]
    row["pieces_per_s"] = n / turn if turn else None
    return row


def error_row(point: int, rnd: int, server: str, k: int, n: int, d_ms: float, exc: BaseException) -> Row:
    return {"kind": "run", "point": point, "round": rnd, "server": server, "group": "all", "k": k, "n": n, "d_ms": d_ms, "error": f"{type(exc).__name__}: {exc}"}


def run_failed(row: Row) -> bool:
    return bool(row.get("error") or row.get("failed") or (row.get("db") is not None and row.get("db_complete") != row["k"]))


def run_bare(opts: Opts, point: int, rnd: int, k: int, n: int, d_ms: float, spread: float) -> Row:
    label = f"p{point} r{rnd} bare"
    log(f"{label}: K={k} N={n} D={d_ms:g} ms")
    tmp = Path(tempfile.mkdtemp(prefix="capbench_"))
    CLEANUP.dirs.append(tmp)
    proc: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        with open(tmp / "bare.log", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), "--serve-bare", str(port), "--delay-ms", f"{d_ms:g}"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        CLEANUP.procs.append(proc)
        wait_port(port, proc, 30)
        warm_specs: list[Spec] = [(i, str(uuid.uuid4()), port, 0, "all") for i in range(WARM_TURNS)]
        warm = run_load(warm_specs, load_cfg(opts, WARM_TURNS, WARM_N, d_ms, min(spread, 0.5), "-"), opts.procs, {})
        specs: list[Spec] = [(i, str(uuid.uuid4()), port, 0, "all") for i in range(k)]
        res = run_load(specs, load_cfg(opts, k, n, d_ms, spread, "-"), opts.procs, {"server": [proc.pid]})
        row = make_row(point, rnd, "bare", None, k, n, d_ms, spread, res, ["server"])
        row["warm_ok"] = summarize(warm, None)["ok"]
        return row
    finally:
        if proc is not None:
            stop_proc(proc)
        remove_dir(tmp)


def run_ours(opts: Opts, point: int, rnd: int, backend: str, nsrv: int, mode: str, k: int, n: int, d_ms: float, spread: float) -> list[Row]:
    """One configuration of ours: a fresh database, nsrv daphne processes, warm-up, the measured turns, the DB check.

    mode: "local" (every turn over its socket), "cross" (every turn by POST to the other process), "mixed" (alternating pairs).
    """
    name = {"sqlite": "ours SQLite", "pg": "ours PG+Redis"}[backend] if nsrv == 1 else {"mixed": "2 procs", "local": "2 procs, all local", "cross": "2 procs, all cross"}[mode]
    label = f"p{point} r{rnd} {name}"
    log(f"{label}: K={k} N={n} D={d_ms:g} ms, setting up")
    tmp = Path(tempfile.mkdtemp(prefix="capbench_"))
    CLEANUP.dirs.append(tmp)
    env = server_env(d_ms)
    db_name: str | None = None
    redis_key: tuple[str, str] | None = None
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    rows: list[Row] = []
    res: LoadResult | None = None
    db: dict[str, Any] | None = None
    failure: BaseException | None = None
    try:
        if backend == "sqlite":
            env["DATABASE_URL"] = f"sqlite:///{tmp}/db.sqlite3"
        else:
            db_name = f"capbench_{secrets.token_hex(5)}"
            create_db(db_name)
            env["DATABASE_URL"] = f"{opts.pg_url.rstrip('/')}/{db_name}"
            prefix = f"capbench_{secrets.token_hex(5)}"
            env.update(REDIS_URL=opts.redis_url, CHANNEL_PREFIX=f"{prefix}_bus", CACHE_PREFIX=f"{prefix}_cache")
            redis_key = (opts.redis_url, prefix)
            CLEANUP.redis.append(redis_key)
        t0 = time.monotonic()
        manage(env, ["migrate", "--noinput", "-v", "0"], timeout=600)
        setup = manage(env, ["shell", "-c", SETUP_SCRIPT], timeout=300, extra={"CAPBENCH_K": str(k), "CAPBENCH_WARM": str(WARM_TURNS)})
        if not setup:
            raise RuntimeError("the setup script printed no JSON")
        token, sessions, warm_sessions = setup["token"], setup["sessions"], setup["warm"]
        ports = [free_port() for _ in range(nsrv)]
        for i, port in enumerate(ports):
            path = tmp / f"daphne-{i}.log"
            logs.append(path)
            with open(path, "wb") as out:
                p = subprocess.Popen(
                    [SERVER_PY, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "chatproject.asgi:application"], cwd=ROOT, env=env,
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                )
            procs.append(p)
            CLEANUP.procs.append(p)
        for port, p in zip(ports, procs, strict=True):
            wait_healthz(port, p, 90)
        log(f"{label}: servers up after {time.monotonic() - t0:.1f} s (pid {', '.join(str(p.pid) for p in procs)}), warming up")

        def spec(i: int, sid: str, how: str) -> Spec:
            if nsrv == 1:
                return (i, sid, ports[0], 0, "all")
            cross = how == "cross" or (how == "mixed" and (i // 2) % 2 == 1)
            group = ("cross" if cross else "local") if how == "mixed" else "all"
            return (i, sid, ports[i % 2], ports[(i + 1) % 2] if cross else 0, group)

        warm = run_load([spec(i, s, "mixed") for i, s in enumerate(warm_sessions)], load_cfg(opts, WARM_TURNS, WARM_N, d_ms, min(spread, 0.5), token), opts.procs, {})
        warm_ok = summarize(warm, None)["ok"]
        if warm_ok < WARM_TURNS:
            log(f"{label}: warm-up: only {warm_ok}/{WARM_TURNS} turns ok: {summarize(warm, None)['reasons']}")
        cpu_pids = {"server": [p.pid for p in procs]}
        if backend == "pg":
            cpu_pids["redis"] = redis_pids()
        log(f"{label}: measuring (loadavg {os.getloadavg()[0]:.2f})")
        scraped = [scrape(port) for port in ports]
        spies = start_spies(opts, label, procs)
        try:
            res = run_load([spec(i, s, mode) for i, s in enumerate(sessions)], load_cfg(opts, k, n, d_ms, spread, token), opts.procs, cpu_pids)
        finally:
            stop_spies(spies)
        parts = breakdown(scraped, [scrape(port) for port in ports])
        log(f"{label}: turns done in {res.wall_s:.1f} s, checking the database")
        db = manage(env, ["shell", "-c", DB_CHECK_SCRIPT], timeout=180)
        groups = ["local", "cross"] if mode == "mixed" and nsrv == 2 else [None]
        for group in groups:
            row = make_row(point, rnd, name + (f", {group}" if group else ""), group, k, n, d_ms, spread, res, ["server"])
            row.update(breakdown=parts, warm_ok=warm_ok, db=db, db_complete=(db or {}).get("assistant", {}).get("complete", 0), backend=backend, server_procs=nsrv, mode=mode)
            rows.append(row)
    except Exception as exc:
        failure = exc
        log(f"{label}: FAILED: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
    finally:
        for p in procs:
            stop_proc(p)
        errors: list[str] = []
        warnings = 0
        for path in logs:
            e, w = scan_log(path)
            errors += [f"{path.name}: {line}" for line in e]
            warnings += w
        kept = None
        if failure is not None or errors or any(run_failed(r) for r in rows):
            kept = keep_logs(opts, label, logs) if logs else None
            if kept:
                log(f"{label}: daphne logs kept in {kept}")
        if db_name:
            drop_db(db_name)
        if redis_key:
            redis_cleanup(*redis_key)
        remove_dir(tmp)
    if failure is not None:
        row = error_row(point, rnd, name, k, n, d_ms, failure)
        rows = [row]
    for row in rows:
        row.update(log_errors=len(errors), log_error_lines=errors[:10], log_warnings=warnings, logs_kept=kept)
    return rows


# ============================================================== the matrix
def guarded(fn: Callable[[], Row | list[Row]], point: int, rnd: int, server: str, k: int, n: int, d_ms: float) -> list[Row]:
    try:
        out = fn()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        log(f"p{point} r{rnd} {server}: FAILED: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
        return [error_row(point, rnd, server, k, n, d_ms, exc)]
    return out if isinstance(out, list) else [out]


def fmt(v: float | None, nd: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{nd}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def find_bare(rows: list[Row], row: Row) -> Row | None:
    """The bare run the row compares with: same round and point, or point 1's for point 4 at the same K, N, D."""
    for r in rows:
        if r["server"] == "bare" and r["round"] == row["round"] and "error" not in r:
            same_point = r["point"] == row["point"]
            p4 = row["point"] == 4 and r["point"] == 1 and (r["k"], r["n"], r["d_ms"]) == (row["k"], row["n"], row["d_ms"])
            if same_point or p4:
                return r
    return None


def add_ratios(rows: list[Row]) -> None:
    for row in rows:
        if row["server"] == "bare" or "error" in row:
            continue
        bare = find_bare(rows, row)
        if bare is None:
            continue
        row["bare_turn_s_p50"] = bare.get("turn_s_p50")
        row["turn_ratio"] = ratio(row.get("turn_s_p50"), bare.get("turn_s_p50"))
        row["cpu_ratio"] = ratio(row.get("us_per_piece"), bare.get("us_per_piece"))
        row["pieces_per_s_ratio"] = ratio(row.get("pieces_per_s"), bare.get("pieces_per_s"))


def cross_costs(rows: list[Row], rounds: int) -> list[dict[str, Any]]:
    out = []
    for rnd in range(1, rounds + 1):
        local = next((r for r in rows if r["point"] == 4 and r["round"] == rnd and r.get("mode") == "local" and "error" not in r), None)
        cross = next((r for r in rows if r["point"] == 4 and r["round"] == rnd and r.get("mode") == "cross" and "error" not in r), None)
        if local is None or cross is None:
            if any(r["point"] == 4 and r["round"] == rnd for r in rows):
                out.append({"round": rnd, "us_per_frame": None, "detail": "the all-local or all-cross run is missing"})
            continue
        parts = [local.get("server_cpu_s"), local.get("redis_cpu_s"), cross.get("server_cpu_s"), cross.get("redis_cpu_s")]
        frames = cross.get("run_frames") or 0
        if any(p is None for p in parts) or not frames:
            out.append({"round": rnd, "us_per_frame": None, "detail": "CPU not measured (a process was gone) or no frames"})
            continue
        cpu_local = local["server_cpu_s"] + local["redis_cpu_s"]
        cpu_cross = cross["server_cpu_s"] + cross["redis_cpu_s"]
        out.append({
            "round": rnd, "us_per_frame": 1e6 * (cpu_cross - cpu_local) / frames, "ms_per_turn": 1e3 * (cpu_cross - cpu_local) / max(1, cross["turns"]),
            "cpu_local_s": cpu_local, "cpu_cross_s": cpu_cross,
            "redis_local_s": local["redis_cpu_s"], "redis_cross_s": cross["redis_cpu_s"], "frames_cross": frames, "frames_local": local.get("run_frames"),
        })
    return out


def print_table(rows: list[Row], rounds: int) -> None:
    head = ["point", "server", "K", "N/D", "ok/failed", "ttfd p50/p99 ms", "turn p50 s", "× bare", "lag p99 ms", "pieces/frame",
            "server CPU µs/piece (× bare)", "client µs/piece", "pieces/s (× bare)", "DB complete"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        point = f"{r['point']}" + (f" r{r['round']}" if rounds > 1 else "")
        nd = f"{r['n']}/{r['d_ms']:g}"
        if "error" in r:
            cells = [point, r["server"], str(r["k"]), nd, "ERROR", r["error"][:80]] + ["-"] * (len(head) - 6)
        else:
            cpu = fmt(r.get("us_per_piece")) + (f" (×{r['cpu_ratio']:.2f})" if r.get("cpu_ratio") else "")
            pps = "-"
            if r["point"] == 3:
                pps = fmt(r.get("pieces_per_s")) + (f" (×{r['pieces_per_s_ratio']:.2f})" if r.get("pieces_per_s_ratio") else "")
            db = "-" if r.get("db") is None else f"{r['db_complete']}/{r['k']}" + (" (whole run)" if r["group"] != "all" else "")
            cells = [
                point, r["server"], str(r["turns"]), nd, f"{r['ok']}/{r['failed']}", f"{fmt(r['ttfd_ms_p50'], 1)} / {fmt(r['ttfd_ms_p99'], 1)}",
                fmt(r["turn_s_p50"], 2), fmt(r.get("turn_ratio"), 2), fmt(r["lag_ms_p99"]), fmt(r["pieces_per_frame"], 2), cpu,
                fmt(r.get("client_us_per_piece")), pps, db,
            ]
        print("| " + " | ".join(cells) + " |")
    print()
    notes = []
    for r in rows:
        where = f"point {r['point']}" + (f" r{r['round']}" if rounds > 1 else "") + f" {r['server']}"
        if r.get("reasons"):
            notes.append(f"- {where}: failures {r['reasons']}")
        if r.get("db") and (r["db"].get("assistant", {}) != {"complete": r["k"]} or r["db"].get("user") != r["k"]):
            notes.append(f"- {where}: database {r['db']}")
        if r.get("log_errors"):
            notes.append(f"- {where}: {r['log_errors']} error lines in the daphne logs (kept in {r.get('logs_kept')}); first: {r['log_error_lines'][0]}")
        if r.get("warm_ok") is not None and r["warm_ok"] < WARM_TURNS:
            notes.append(f"- {where}: warm-up {r['warm_ok']}/{WARM_TURNS} ok")
        if r.get("worker_errors"):
            notes.append(f"- {where}: client process errors {r['worker_errors']}")
        if r.get("breakdown"):
            notes.append(f"- {where}: in the server: {fmt_breakdown(r['breakdown'])}")
        if r.get("group") == "cross" and r.get("post_ms_p50") is not None:
            notes.append(f"- {where}: POST /api/v1/messages/ answered in {r['post_ms_p50']:.1f} ms (p50)")
    if notes:
        print("Notes:")
        print("\n".join(dict.fromkeys(notes)))
        print()


def make_checks(rows: list[Row], costs: list[dict[str, Any]], rounds: int) -> list[dict[str, str]]:
    checks: list[dict[str, str]] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        checks.append({"check": name, "result": "SKIP" if ok is None else "PASS" if ok else "FAIL", "detail": detail})

    def tag(r: Row) -> str:
        return f"point {r['point']}" + (f" r{r['round']}" if rounds > 1 else "") + f", {r['server']}"

    def all_ok(r: Row) -> None:
        if "error" in r:
            add(f"{tag(r)}: every turn ok", False, r["error"])
        else:
            add(f"{tag(r)}: every turn ok", r["failed"] == 0 and r["ok"] == r["turns"], f"{r['ok']}/{r['turns']} ok" + (f", {r['reasons']}" if r["reasons"] else ""))

    def db_ok(r: Row) -> None:
        if "error" in r:
            return
        add(f"{tag(r)}: DB complete = K", r.get("db_complete") == r["k"], f"{r.get('db_complete')}/{r['k']} complete, {r.get('db')}")

    for r in rows:
        ours = r["server"] != "bare"
        if r["point"] in (1, 2):
            all_ok(r)
            if not ours or "error" in r:
                continue
            db_ok(r)
            if r["point"] == 1:
                tr = r.get("turn_ratio")
                add(f"{tag(r)}: turn p50 ≤ 1.15 × bare", None if tr is None else tr <= 1.15,
                    f"{fmt(r['turn_s_p50'], 2)} s vs bare {fmt(r.get('bare_turn_s_p50'), 2)} s (×{fmt(tr, 2)})")
                t99 = r["ttfd_ms_p99"]
                add(f"{tag(r)}: ttfd p99 ≤ 250 ms", None if t99 is None else t99 <= 250, f"{fmt(t99, 1)} ms")
            else:
                add(f"{tag(r)}: pace lag (reported only)", None, f"lag p99 {fmt(r['lag_ms_p99'])} ms, turn p50 {fmt(r['turn_s_p50'], 2)} s")
        elif r["point"] == 3 and ours:
            if "error" in r:
                add(f"{tag(r)}: zero-delay pieces/s ≥ 0.6 × bare", False, r["error"])
                continue
            p1 = next((x for x in rows if x["point"] == 1 and x["round"] == r["round"] and x.get("backend") == r.get("backend") and "error" not in x), None)
            if p1 is None or p1.get("cpu_ratio") is None:
                add(f"{tag(r)}: server CPU per piece ≤ 2 × bare (point 1's runs)", None, "point 1 did not run in this round")
            else:
                add(f"{tag(r)}: server CPU per piece ≤ 2 × bare (point 1's runs)", p1["cpu_ratio"] <= 2.0,
                    f"point 1: {fmt(p1['us_per_piece'])} µs/piece, ×{p1['cpu_ratio']:.2f} bare")
            pr = r.get("pieces_per_s_ratio")
            ok = None if pr is None and r["failed"] == 0 else (r["failed"] == 0 and pr is not None and pr >= 0.6)
            add(f"{tag(r)}: zero-delay pieces/s ≥ 0.6 × bare", ok, f"{fmt(r.get('pieces_per_s'))} pieces/s (×{fmt(pr, 2)})" + (f", {r['reasons']}" if r["reasons"] else ""))
        elif r["point"] == 3:
            all_ok(r)
        elif r["point"] == 4:
            all_ok(r)
            if "error" not in r and r["group"] != "cross":  # one DB check per run (the mixed run's two rows share it)
                db_ok(r)
    for c in costs:
        name = "point 4" + (f" r{c['round']}" if rounds > 1 else "") + ": cross-process cost per delta frame printed"
        if c["us_per_frame"] is None:
            add(name, False, c["detail"])
        else:
            add(name, True, f"{c['us_per_frame']:.1f} µs/frame")
    return checks


def parse_points(text: str) -> list[int]:
    points = []
    for item in text.split(","):
        digits = re.sub(r"\D", "", item)
        if digits:
            p = int(digits)
            if p not in (1, 2, 3, 4):
                raise SystemExit(f"--only: no point {p} (1, 2, 3, 4)")
            points.append(p)
    return sorted(set(points)) or [1, 2, 3, 4]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def bench(args: argparse.Namespace) -> int:
    points = parse_points(args.only)
    servers = {name.strip() for name in args.servers.split(",") if name.strip()}
    if not servers <= {"bare", "sqlite", "pg"}:
        raise SystemExit(f"--servers: unknown {sorted(servers - {'bare', 'sqlite', 'pg'})}; choose from bare, sqlite, pg")
    opts = Opts(
        procs=max(1, args.procs), ramp=args.ramp, connect_concurrency=args.connect_concurrency, turn_timeout=args.turn_timeout,
        redis_url=f"{args.redis_url.rstrip('/')}/{args.redis_db}", pg_url=args.pg_url, logs=Path(args.logs), seed=args.seed,
        py_spy=args.py_spy,
        py_spy_args=tuple(args.py_spy_args.split()),
    )
    CLEANUP.admin_dsn = f"{args.pg_url.rstrip('/')}/postgres"
    invocation = uuid.uuid4().hex[:12]
    started = time.monotonic()
    rows: list[Row] = []
    for rnd in range(1, args.repeats + 1):
        for point in points:
            jobs: list[tuple[str, Callable[[], Row | list[Row]]]] = []
            if point in (1, 2, 3):
                if point == 3:
                    k, n, d, spread = 1, args.n or 5000, 0.0, 0.0
                else:
                    k, n, d, spread = args.k or (500 if point == 1 else 1000), args.n or 200, 20.0 if args.d is None else args.d, args.spread
                if "bare" in servers:
                    jobs.append(("bare", functools.partial(run_bare, opts, point, rnd, k, n, d, spread)))
                if "sqlite" in servers:
                    jobs.append(("ours SQLite", functools.partial(run_ours, opts, point, rnd, "sqlite", 1, "local", k, n, d, spread)))
                if "pg" in servers:
                    jobs.append(("ours PG+Redis", functools.partial(run_ours, opts, point, rnd, "pg", 1, "local", k, n, d, spread)))
            else:
                k, n, d, spread = args.k or 500, args.n or 200, 20.0 if args.d is None else args.d, args.spread
                for mode in ("mixed", "local", "cross"):
                    jobs.append((f"2 procs ({mode})", functools.partial(run_ours, opts, point, rnd, "pg", 2, mode, k, n, d, spread)))
            for server, job in jobs:
                rows += guarded(job, point, rnd, server, k, n, d)
            for r in rows:
                if "printed" not in r:
                    r["printed"] = True
                    if "error" in r:
                        log(f"  -> {r['server']}: ERROR {r['error']}")
                    else:
                        log(f"  -> {r['server']}: {r['ok']}/{r['turns']} ok, ttfd p99 {fmt(r['ttfd_ms_p99'], 1)} ms, turn p50 {fmt(r['turn_s_p50'], 2)} s, "
                            f"{fmt(r['us_per_piece'])} µs/piece" + (f", DB {r.get('db_complete')}/{r['k']}" if r.get("db") is not None else ""))
    add_ratios(rows)
    costs = cross_costs(rows, args.repeats)
    checks = make_checks(rows, costs, args.repeats)
    elapsed = time.monotonic() - started

    load = os.getloadavg()
    print(f"\n## Capacity matrix ({datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, loadavg {load[0]:.2f}, "
          f"{args.procs} client processes, {elapsed:.0f} s)\n")
    print_table(rows, args.repeats)
    for c in costs:
        where = "Cross-process cost" + (f" (round {c['round']})" if args.repeats > 1 else "")
        if c["us_per_frame"] is None:
            print(f"{where}: not measured: {c['detail']}")
        else:
            print(f"{where}: {c['us_per_frame']:.1f} µs per delta frame = (daphne A+B + redis CPU, all cross {c['cpu_cross_s']:.2f} s "
                  f"- all local {c['cpu_local_s']:.2f} s) / {c['frames_cross']:,} frames delivered in the all-cross run "
                  f"(redis alone: {c['redis_cross_s']:.2f} s vs {c['redis_local_s']:.2f} s; all-local frames {c['frames_local']:,}); "
                  f"per turn {c['ms_per_turn']:.2f} ms, the POST of each cross turn included")
    if costs:
        print()
    print("Checks:")
    for c in checks:
        print(f"- {c['result']}: {c['check']}: {c['detail']}")
    failed = [c for c in checks if c["result"] == "FAIL"]
    print(f"\n{len(failed)} of {len(checks)} checks failed" + (": " + "; ".join(c["check"] for c in failed) if failed else "") + ".")

    if args.json:
        meta = {"invocation": invocation, "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "commit": git_commit()}
        with open(args.json, "a") as f:
            for r in rows:
                r.pop("printed", None)
                f.write(json.dumps({**meta, **r}) + "\n")
            f.write(json.dumps({**meta, "kind": "summary", "args": vars(args), "elapsed_s": elapsed, "checks": checks, "cross_cost": costs}) + "\n")
        print(f"JSON appended to {args.json}")
    return 2 if any("error" in r for r in rows) else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog="See the module docstring for the columns.")
    ap.add_argument("--only", default="1,2,3,4", help="points to run, e.g. 1,3 (default all)")
    ap.add_argument("--servers", default="bare,sqlite,pg", help="servers of points 1-3 (default bare,sqlite,pg; a ratio needs bare)")
    ap.add_argument("-k", type=int, help="clients (points 1, 2, 4; default 500, 1000, 500)")
    ap.add_argument("-n", type=int, help="pieces per reply (default 200; point 3: 5000)")
    ap.add_argument("-d", type=float, help="ms between pieces (points 1, 2, 4; default 20)")
    ap.add_argument("--spread", type=float, default=1.0, help="turn starts spread over S seconds (points 1, 2, 4; default 1.0)")
    ap.add_argument("--procs", type=int, default=2, help="client OS processes (default 2)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of every configuration (default 1)")
    ap.add_argument("--json", help="append one JSON object per run, and a summary, to this file")
    ap.add_argument("--ramp", type=float, default=500.0, help="connects per second over all client processes (default 500)")
    ap.add_argument("--connect-concurrency", type=int, default=50, help="handshakes in flight per client process (default 50)")
    ap.add_argument("--turn-timeout", type=float, help="seconds per turn (default 60 + 3 x N x D)")
    ap.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server (trust auth)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379", help="Redis server")
    ap.add_argument("--redis-db", type=int, default=7, help="Redis database number (keys get a unique prefix and are deleted)")
    ap.add_argument("--logs", default=str(Path(tempfile.gettempdir()) / "capbench-logs"), help="where daphne logs of failed runs are kept")
    ap.add_argument("--py-spy", metavar="PATH", help="py-spy binary: sample every server of ours over its measured phase (files under --logs)")
    ap.add_argument("--py-spy-args", default="", metavar="ARGS", help='more arguments of py-spy record, e.g. "--gil" (only the thread that holds the GIL)')
    ap.add_argument("--seed", type=int, default=1, help="seed of the send times")
    ap.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--delay-ms", type=float, default=20.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare, args.delay_ms)
        return 0
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return bench(args)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        CLEANUP.run()


if __name__ == "__main__":
    sys.exit(main())
