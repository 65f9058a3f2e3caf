"""A local HTTP endpoint for the approval-gated webhook_post tool; counts what it receives."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class WebhookReceiver:
    """A local HTTP endpoint for the approval-gated webhook_post tool; counts what it receives."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        # Set `gate` to an unset Event to hold every answer until it is set (a slow endpoint);
        # `received` is set as soon as a body has arrived.
        self.gate: threading.Event | None = None
        self.received = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.hosts.append(self.headers.get("Host"))
                receiver.bodies.append(json.loads(self.rfile.read(length) or b"null"))
                receiver.received.set()
                if receiver.gate is not None:
                    receiver.gate.wait(timeout=30)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.origin}/hook"
        self.hosts: list[str | None] = []  # the Host header of every request
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookReceiver]:
    """The receiver, its origin allowed here and in every server process the test starts."""
    from django.conf import settings

    receiver = WebhookReceiver()
    monkeypatch.setitem(settings.CHAT, "WEBHOOK_ALLOWED_ORIGINS", [receiver.origin])
    monkeypatch.setenv("WEBHOOK_ALLOWED_ORIGINS", receiver.origin)
    yield receiver
    receiver.close()


