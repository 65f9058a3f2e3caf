"""A fleet as deploy/ sets one up: nginx (Debian's package) in front of daphne processes, on PostgreSQL and Redis.

For tests/test_fleet.py and bench/rolling_restart.py. Everything runs as child processes of the
caller, on free ports, in a temporary directory, and `Fleet.stop` ends all of it:

- nginx with the upstream and map of deploy/nginx/chat.conf (its server lines pointed at these
  processes, their parameters kept) and deploy/nginx/chat-locations.conf as it is (only the
  static files' directory changed), serving plain HTTP;
- daphne processes started with the ExecStart of deploy/systemd/chat@.service, with the
  environment deploy/chat.env.example asks for behind nginx (TRUSTED_PROXIES=1, SERVE_STATIC=0);
- a Redis server of their own, so that it can be restarted without touching anyone else's.

`Person` is a client through nginx that behaves like the page: it sends a turn with a client_id,
reconnects on a close (4503 included) and sends again on `unavailable`, and assembles every reply
from `session.ready` and `message.delta` offsets, whichever process it lands on.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

from tests.live import ROOT, DaphneServer, free_port

DEPLOY = ROOT / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def missing() -> str | None:
    """What this machine lacks to run a fleet (None: nothing)."""
    if not Path(NGINX).exists():
        return f"nginx not found ({NGINX}; apt-get install nginx)"
    if not Path(REDIS_SERVER).exists():
        return f"redis-server not found ({REDIS_SERVER}; apt-get install redis-server)"
    return None


def unit_argv() -> list[str]:
    """The ExecStart of deploy/systemd/chat@.service, with this checkout's daphne, `{port}` for the instance."""
    unit = (DEPLOY / "systemd" / "chat@.service").read_text()
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    daphne = str(Path(sys.executable).with_name("daphne"))
    return [daphne if part.endswith("/.venv/bin/daphne") else part.replace("%i", "{port}") for part in shlex.split(line.removeprefix("ExecStart="))]


def collect_static(into: Path) -> None:
    """`manage.py collectstatic` into `into`, as chat-migrate.service does into STATIC_ROOT."""
    env = {**os.environ, "STATIC_ROOT": str(into), "DJANGO_ALLOW_ASYNC_UNSAFE": ""}
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)


def nginx_config(*, directory: Path, port: int, upstreams: list[int], static_root: Path) -> str:
    """nginx.conf for this fleet: deploy's upstream, map and locations; temp paths and logs in `directory`."""
    chat_conf = (DEPLOY / "nginx" / "chat.conf").read_text()
    upstream = re.search(r"^upstream chat_backend \{.*?^\}", chat_conf, re.S | re.M)
    upgrade_map = re.search(r"^map \$http_upgrade .*?^\}", chat_conf, re.S | re.M)
    assert upstream and upgrade_map, "deploy/nginx/chat.conf lost its upstream or its map"
    params = re.findall(r"^\s*server 127\.0\.0\.1:\d+([^;]*);", upstream.group(0), re.M)
    assert params, "deploy/nginx/chat.conf's upstream has no server 127.0.0.1:<port> line"
    ours = "".join(f"    server 127.0.0.1:{p}{params[0]};\n" for p in upstreams)
    upstream_block = re.sub(r"(?:^\s*server 127\.0\.0\.1:\d+[^;]*;\n)+", ours, upstream.group(0), flags=re.M)
    locations = (DEPLOY / "nginx" / "chat-locations.conf").read_text()
    assert "/srv/chat/staticfiles/" in locations
    (directory / "chat-locations.conf").write_text(locations.replace("/srv/chat/staticfiles/", f"{static_root}/"))
    temp = "\n".join(f"    {kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # As root, nginx's workers would run as nobody, who cannot read a private temporary directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
error_log {directory / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {directory / "access.log"};
{temp}
{upstream_block}
{upgrade_map.group(0)}
    server {{
        listen 127.0.0.1:{port};
        server_name _;
        # Which process answered (here only: a deployment does not tell its clients).
        add_header X-Chat-Upstream $upstream_addr always;
        include {directory / "chat-locations.conf"};
    }}
}}
"""


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


class Nginx:
    def __init__(self, directory: Path, upstreams: list[int], static_root: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.upstreams = upstreams
        self.static_root = static_root
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.directory / kind).mkdir(exist_ok=True)
        conf = self.directory / "nginx.conf"
        conf.write_text(nginx_config(directory=self.directory, port=self.port, upstreams=self.upstreams, static_root=self.static_root))
        argv = [NGINX, "-p", str(self.directory), "-e", str(self.directory / "error.log"), "-c", str(conf)]
        subprocess.run([*argv, "-t", "-q"], check=True, capture_output=True)
        self.proc = subprocess.Popen([*argv, "-g", f"daemon off; pid {self.directory / 'nginx.pid'};"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, "nginx")
        return self

    def errors(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "error.log").read_text()[-4000:]
        return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown: every connection closes
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, self.proc, "redis-server")
        return self

    def kill(self) -> None:
        """SIGKILL: Redis is gone at once, with every connection and subscription."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Restart:
    """One process's restart, as systemd does it: SIGTERM, its exit (the drain), a new process on its port, answering /healthz."""

    port: int
    drained: float  # seconds from SIGTERM to exit
    started: float  # seconds from the new process's start to its first 200 from /healthz
    exit_code: int


class Fleet:
    """nginx, `processes` daphne processes and a Redis server; `stop()` ends them all."""

    _static: Path | None = None  # collected once per run

    def __init__(self, processes: int = 2, env: dict[str, str] | None = None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="fleet-"))
        os.chmod(self.directory, 0o755)
        self.redis = RedisServer(self.directory)
        prefix = f"fleet{os.getpid()}x{self.redis.port}"
        self.env = {
            # What deploy/chat.env.example asks for behind nginx.
            "TRUSTED_PROXIES": "1", "SERVE_STATIC": "0", "SHUTDOWN_GRACE": "30", "LOG_FORMAT": "json",
            "REDIS_URL": self.redis.url, "CHANNEL_PREFIX": prefix, "CACHE_PREFIX": prefix,
            **(env or {}),
        }
        self.servers = [DaphneServer(env=self.env, argv=unit_argv()) for _ in range(processes)]
        self.nginx: Nginx | None = None

    @classmethod
    def static_root(cls) -> Path:
        if cls._static is None:
            static = Path(tempfile.mkdtemp(prefix="fleet-static-"))
            atexit.register(shutil.rmtree, static, True)
            os.chmod(static, 0o755)
            collect_static(static)
            cls._static = static
        return cls._static

    def start(self) -> Fleet:
        try:
            static = self.static_root()
            self.env["STATIC_ROOT"] = str(static)
            self.redis.start()
            for server in self.servers:
                server.start()
            self.nginx = Nginx(self.directory, [s.port for s in self.servers], static).start()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    @property
    def ws_url(self) -> str:
        assert self.nginx is not None
        return self.nginx.ws_url

    def restart(self, index: int) -> Restart:
        """SIGTERM the process, wait for its exit, start a new one on its port (blocking: run it in a thread)."""
        server = self.servers[index]
        began = time.monotonic()
        server.terminate()
        code = server.wait()
        drained = time.monotonic() - began
        began = time.monotonic()
        server.start(timeout=60)
        return Restart(port=server.port, drained=drained, started=time.monotonic() - began, exit_code=code)

    def logs(self) -> str:
        return "\n".join(f"--- daphne {s.port}\n{s.log()}" for s in self.servers) + (f"\n--- nginx\n{self.nginx.errors()}" if self.nginx else "")

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for server in self.servers:
            server.stop()
        self.redis.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


# Clients ------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """What one person's sockets made of the session's replies."""

    text: dict[str, str] = field(default_factory=dict)  # reply id -> the text assembled from snapshots and deltas
    ended: dict[str, dict[str, Any]] = field(default_factory=dict)  # reply id -> its message.completed, seen live
    closes: Counter = field(default_factory=Counter)  # close codes of its sockets (None: the connection dropped)
    upstreams: Counter = field(default_factory=Counter)  # which process each socket landed on
    unavailable: int = 0  # user messages refused by a draining process (then sent again)
    resent: int = 0  # user messages sent again after a reconnect or `unavailable`
    connects: int = 0
    failed_connects: int = 0
    refused_handshakes: Counter = field(default_factory=Counter)  # HTTP status of handshakes nginx answered itself (502: no process)
    spans: list[tuple[float, float]] = field(default_factory=list)  # (sent, reply ended) of each turn, monotonic seconds
    replies: list[str] = field(default_factory=list)  # this person's replies, in order
    errors: list[dict[str, Any]] = field(default_factory=list)  # error frames other than `unavailable`

    def ready(self, frame: dict[str, Any]) -> None:
        for item in frame["active"]:
            # The snapshot is a prefix of the reply: take it where it knows more than this client.
            if len(item["content"]) > len(self.text.get(item["message_id"], "")):
                self.text[item["message_id"]] = item["content"]

    def delta(self, frame: dict[str, Any]) -> None:
        text = self.text.get(frame["message_id"], "")
        offset, piece = frame["offset"], frame["delta"]
        if offset <= len(text) < offset + len(piece):  # repeats dropped, gaps left to the catch-up
            self.text[frame["message_id"]] = text + piece[len(text) - offset :]


class Person:
    """One person with one session, on a socket through nginx, reconnecting and resending like the page."""

    def __init__(self, ws_url: str, session_id: str, token: str) -> None:
        self.url = f"{ws_url}/ws/sessions/{session_id}/"
        self.token = token
        self.ws: websockets.ClientConnection | None = None
        self.seen = Seen()

    async def connect(self) -> dict[str, Any]:
        """Connect through nginx (again and again while no process takes it); the `session.ready` frame."""
        delay = 0.05
        while True:
            try:
                ws = await websockets.connect(self.url, additional_headers={"Authorization": f"Token {self.token}"}, max_size=None, open_timeout=10)
                # nginx lists every process it tried ("a, b" when a refused the connection): the last one answered.
                self.seen.upstreams[ws.response.headers.get("X-Chat-Upstream", "?").split(",")[-1].strip()] += 1
                ready = json.loads(await asyncio.wait_for(ws.recv(), 15))
                if ready["type"] == "session.ready":
                    break
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed) as exc:
                if isinstance(exc, websockets.ConnectionClosed):
                    self.seen.closes[exc.rcvd.code if exc.rcvd else None] += 1  # e.g. 4503 from a process that began draining
                if isinstance(exc, websockets.InvalidStatus):
                    self.seen.refused_handshakes[exc.response.status_code] += 1
                self.seen.failed_connects += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        self.seen.connects += 1
        self.ws = ws
        self.seen.ready(ready)
        return ready

    async def recv(self) -> dict[str, Any]:
        assert self.ws is not None
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
        kind = frame["type"]
        if kind == "message.delta":
            self.seen.delta(frame)
        elif kind == "session.ready":  # a resync (the bus lost its link)
            self.seen.ready(frame)
        elif kind == "message.completed" and frame["message"]["role"] == "assistant":
            self.seen.ended[frame["message"]["id"]] = frame["message"]
        return frame

    def dropped(self, exc: websockets.ConnectionClosed) -> None:
        self.seen.closes[exc.rcvd.code if exc.rcvd else None] += 1
        self.ws = None

    async def turn(self, content: str) -> str:
        """Send a user message and read until its reply ends, across reconnects; the reply's id."""
        client_id = str(uuid.uuid4())
        began = time.monotonic()
        user_id = reply_id = None
        sends = 0
        send = True
        while True:
            if self.ws is None:
                ready = await self.connect()
                if reply_id is not None and reply_id not in self.seen.ended and reply_id not in {i["message_id"] for i in ready["active"]}:
                    send = True  # it ended while this client was away: the repeated client_id's answer says how
            try:
                if send:
                    # The same client_id every time: a repeat makes nothing new, and is answered with the
                    # turn's messages as they are now (the page sends outstanding messages again the same way).
                    await self.ws.send(json.dumps({"type": "user_message", "content": content, "client_id": client_id, "request_id": client_id}))
                    sends += 1
                    send = False
                while True:
                    frame = await self.recv()
                    kind = frame["type"]
                    message = frame.get("message") or {}
                    if kind == "error":
                        if frame.get("request_id") == client_id and frame["code"] == "unavailable":
                            self.seen.unavailable += 1
                            await self.ws.close()  # as the page does: a new connection at once, through nginx
                            self.ws = None
                            send = True
                            break
                        self.seen.errors.append(frame)
                    elif kind == "message.created" and message.get("client_id") == client_id:
                        user_id = message["id"]
                    elif kind == "message.created" and user_id and message.get("reply_to") == user_id and message["role"] == "assistant":
                        reply_id = message["id"]
                        if message["status"] != "streaming":  # the answer to a repeat, after the reply ended unseen
                            break
                    elif kind == "message.completed" and reply_id and message.get("id") == reply_id:
                        break
                if reply_id is not None and self.ws is not None:
                    self.seen.spans.append((began, time.monotonic()))
                    self.seen.replies.append(reply_id)
                    self.seen.resent += sends - 1
                    return reply_id
            except websockets.ConnectionClosed as exc:
                self.dropped(exc)
                if reply_id is None:
                    send = True  # maybe never saved: send again

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
            self.ws = None


class Watcher(Person):
    """A second tab that only watches. With `drops`, its connection drops every second or two: each time it
    comes back through nginx (to whichever process) and picks the replies up from `session.ready`."""

    def __init__(self, ws_url: str, session_id: str, token: str, *, drops: bool = True) -> None:
        super().__init__(ws_url, session_id, token)
        self.drops = drops
        self.resyncs = 0  # session.ready frames on an open socket (the process lost its link to Redis)

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.ws is None:
                await self.connect()
            until = time.monotonic() + (random.uniform(0.3, 2.0) if self.drops else 3600.0)
            try:
                while time.monotonic() < until and not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        assert self.ws is not None
                        frame = json.loads(await asyncio.wait_for(self.ws.recv(), min(0.5, max(0.01, until - time.monotonic()))))
                        if frame["type"] == "message.delta":
                            self.seen.delta(frame)
                        elif frame["type"] == "session.ready":
                            self.resyncs += 1
                            self.seen.ready(frame)
                        elif frame["type"] == "message.completed" and frame["message"]["role"] == "assistant":
                            self.seen.ended[frame["message"]["id"]] = frame["message"]
                await self.close()
            except websockets.ConnectionClosed as exc:
                self.dropped(exc)
