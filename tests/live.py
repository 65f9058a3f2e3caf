"""Real daphne server processes on the test database, for tests that cross a process boundary.

Use from transactional tests (`pytest.mark.django_db(transaction=True)`): rows the test writes
must be committed for the server to see them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_url() -> str:
    """DATABASE_URL of the database this test runs on (the test database, not the configured one)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "")
    password = quote(db.get("PASSWORD") or "")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


class DaphneServer:
    """One daphne process on the test database. `argv` replaces the command line (`{port}` in it is the port)."""

    def __init__(self, env: dict[str, str] | None = None, port: int | None = None, argv: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.extra_env = env or {}
        self.argv = argv or [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", "chatproject.asgi:application"]
        self.proc: subprocess.Popen | None = None
        self.log_path = ROOT / f".daphne-{self.port}.log"
        self.env: dict[str, str] = {}
        with contextlib.suppress(OSError):
            self.log_path.unlink()  # a stale one of an earlier run; restarts append to this run's

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> DaphneServer:
        env = {
            **os.environ,
            "DATABASE_URL": test_database_url(),
            "SECRET_KEY": settings.SECRET_KEY,
            "DEBUG": "0",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DEMO_DELTA_DELAY": "0.01",
            "DEMO_SLOW_DELAY": "0.05",
            "WORKER_HEARTBEAT": "1",
            "WORKER_TIMEOUT": "5",
            "THROTTLE_WRITES": "100000/min",
            "TURNS_PER_MINUTE": "0",
            "MAX_REPLIES_PER_USER": "0",
            "WS_MAX_SOCKETS_PER_USER": "0",
            # SIGTERM at the end of a test drains: running replies get this long to end.
            "SHUTDOWN_GRACE": "5",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("CHAT_SKIP_STARTUP_SWEEP", None)
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # the server keeps Django's async-safety checks
        if settings.REDIS_URL:
            env["REDIS_URL"] = settings.REDIS_URL
        env.update(self.extra_env)
        self.env = env
        log = open(self.log_path, "a")  # noqa: SIM115 (kept open for the process's life; a restart appends)
        self.proc = subprocess.Popen(
            [part.replace("{port}", str(self.port)) for part in self.argv],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daphne exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"daphne did not answer /healthz within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM, as systemd or a container runtime stops it: the process drains, then exits. Does not wait."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Wait for the process to exit (a drain takes at most SHUTDOWN_GRACE and a little); its exit code."""
        assert self.proc is not None
        grace = float(self.env.get("SHUTDOWN_GRACE") or 30)
        try:
            return self.proc.wait(grace + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise RuntimeError(f"daphne did not exit within {grace + 30:.0f}s of SIGTERM:\n{self.log()}") from None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.terminate()
            with contextlib.suppress(RuntimeError):
                self.wait()
        with contextlib.suppress(OSError):
            self.log_path.unlink()


@pytest.fixture
def daphne_server() -> Iterator:
    """A factory: `server = daphne_server(env={...})` starts one; all are stopped after the test."""
    servers: list[DaphneServer] = []

    def start(env: dict[str, str] | None = None, port: int | None = None, argv: list[str] | None = None) -> DaphneServer:
        server = DaphneServer(env=env, port=port, argv=argv).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
