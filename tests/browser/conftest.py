"""Browser tests: the chat page in real Chromium (Playwright's sync API) against a real daphne.

Chromium comes from the system (`CHROMIUM_PATH`, default /usr/bin/chromium); without it every
browser test is skipped. Sync tests only: Playwright's sync API must not run inside an asyncio loop.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.live import free_port

CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "pw-Secret-123"
# Generous: a slow CI machine, and replies that stream on purpose.
TIMEOUT_MS = 20_000


def _skip_without_browser() -> None:
    if not Path(CHROMIUM_PATH).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM_PATH} (set CHROMIUM_PATH to run the browser tests)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed")


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    _skip_without_browser()
    # Playwright's sync API keeps its event loop marked as running in this thread, so Django
    # takes the test's own (plain, synchronous) ORM calls for calls from async code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


def _ensure_default_agents() -> None:
    """The agents a data migration creates; transactional tests flush them after each test."""
    import importlib

    from chat.models import Agent

    defaults = importlib.import_module("chat.migrations.0003_default_agents").DEFAULT_AGENTS
    for data in defaults:
        Agent.objects.get_or_create(slug=data["slug"], defaults={**data, "provider": "demo"})


@dataclass
class Live:
    url: str
    username: str
    password: str
    user: Any
    server: Any


@pytest.fixture
def live(daphne_server, make_user) -> Live:  # type: ignore[no-untyped-def]
    """A user (made with the ORM) and a daphne serving the test database.

    Ordinary replies stream slowly enough to be seen streaming; `/slow` deltas come every 50 ms.
    """
    _ensure_default_agents()
    user = make_user("alice", password=PASSWORD)
    # The server must not inherit the test's DJANGO_ALLOW_ASYNC_UNSAFE (an empty value is off).
    server = daphne_server(env={
        "DEMO_DELTA_DELAY": "0.04", "DEMO_SLOW_DELAY": "0.05", "DJANGO_ALLOW_ASYNC_UNSAFE": "",
        # The one origin the webhook tool may reach: the `webhook` fixture's endpoint.
        "WEBHOOK_ALLOWED_ORIGINS": f"http://127.0.0.1:{HOOK_PORT}",
    })
    return Live(url=server.url, username="alice", password=PASSWORD, user=user, server=server)


class ChatPage:
    """The chat page, seen the way a user sees it."""

    def __init__(self, page: Any, live: Live) -> None:
        self.page = page
        self.live = live
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: msg.type == "error" and "Content Security Policy" in msg.text and self.errors.append(msg.text),
        )

    # Navigation ------------------------------------------------------------------

    def login(self) -> ChatPage:
        page = self.page
        page.goto(f"{self.live.url}/")
        page.wait_for_url(re.compile(r"/accounts/login/"))
        page.get_by_label("Username").fill(self.live.username)
        page.get_by_label("Password").fill(self.live.password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/accounts/login" not in url)
        self.wait_loaded()
        return self

    def open(self, session_id: str) -> ChatPage:
        self.page.goto(f"{self.live.url}/?s={session_id}")
        self.wait_connected()
        return self

    def wait_loaded(self) -> None:
        self.page.wait_for_function("() => document.querySelector('#session-list') !== null")
        self.page.wait_for_load_state("networkidle")

    def wait_connected(self) -> None:
        from playwright.sync_api import expect

        expect(self.page.locator("#conn")).to_have_attribute("data-state", "connected")

    def new_chat(self) -> str:
        before = self.page.url
        self.page.get_by_role("button", name="New chat").click()
        self.page.wait_for_url(lambda url: url != before and re.search(r"\?s=[0-9a-f-]{36}", url) is not None)
        self.wait_connected()
        return self.session_id

    def reload(self) -> None:
        self.page.reload()
        self.wait_connected()

    @property
    def session_id(self) -> str:
        match = re.search(r"[?&]s=([0-9a-f-]{36})", self.page.url)
        assert match, f"no session in {self.page.url}"
        return match.group(1)

    # Conversation ----------------------------------------------------------------

    def send(self, text: str) -> None:
        box = self.page.get_by_label("Message", exact=True)
        from playwright.sync_api import expect

        expect(box).to_be_enabled()
        box.fill(text)
        box.press("Enter")

    def messages(self, role: str | None = None) -> Any:
        selector = "#messages article.msg[data-id]"
        if role:
            selector += f'[data-role="{role}"]'
        return self.page.locator(selector)

    def last_reply(self) -> Any:
        return self.messages("assistant").last

    def message(self, message_id: str) -> Any:
        return self.page.locator(f'#messages article.msg[data-id="{message_id}"]')

    def wait_status(self, locator: Any, status: str, timeout: float = TIMEOUT_MS) -> None:
        from playwright.sync_api import expect

        expect(locator).to_have_attribute("data-status", status, timeout=timeout)

    def body_text(self, locator: Any) -> str:
        return locator.locator(".msg__body").inner_text()


@pytest.fixture
def chat_page(context: Any, live: Live):  # type: ignore[no-untyped-def]
    """A factory of logged-in-or-not pages in one browser context (tabs that share cookies)."""
    pages: list[ChatPage] = []

    def make() -> ChatPage:
        page = ChatPage(context.new_page(), live)
        pages.append(page)
        return page

    yield make
    for page in pages:
        assert not page.errors, f"JavaScript errors on the page: {page.errors}"


def normalized(text: str) -> str:
    return " ".join(text.split())


def saved_messages(session_id: str) -> list[Any]:
    from chat.models import Message

    return list(Message.objects.filter(session_id=session_id).order_by("seq"))


# Chosen once, so the server (started before this fixture) can be told the one origin it may reach.
HOOK_PORT = free_port()


@dataclass
class Hook:
    """A local HTTP endpoint that records what the webhook tool posts to it."""

    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@pytest.fixture
def webhook() -> Iterator[Hook]:
    hook = Hook(port=HOOK_PORT)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
            hook.requests.append({"path": self.path, "body": body})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"ok": true}')

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", hook.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


class SocketTap:
    """Sits between the page and the real socket: records the frames both ways, can hold frames,
    inject frames, cut the connection and refuse new ones.

    `hold`: types of page frames that never reach the server (the page's send() still succeeds,
    as when a frame is lost with the connection). `refuse`: new connections are closed at once.
    """

    def __init__(self, page, hold: tuple[str, ...] = ()) -> None:  # type: ignore[no-untyped-def]
        self.sent: list[dict] = []  # frames from the page
        self.sent_on: list[int] = []  # ... and the connection (index into routes) each went on
        self.received: list[dict] = []  # frames from the server that reached the page
        self.routes: list[Any] = []
        self.route: Any = None
        self.hold = set(hold)
        self.refuse = False
        self.refused = 0
        self.dead: set[int] = set()  # connections whose server frames are dropped (a dead link)
        page.route_web_socket(re.compile(r"/ws/sessions/"), self._handle)

    def _handle(self, ws) -> None:  # type: ignore[no-untyped-def]
        if self.refuse:
            self.refused += 1
            ws.close(code=4000, reason="refused by the test")
            return
        server = ws.connect_to_server()
        index = len(self.routes)
        self.routes.append(ws)
        self.route = ws

        def from_page(message) -> None:  # type: ignore[no-untyped-def]
            frame = json.loads(message)
            self.sent.append(frame)
            self.sent_on.append(index)
            if frame.get("type") not in self.hold:
                server.send(message)

        def from_server(message) -> None:  # type: ignore[no-untyped-def]
            if index in self.dead:
                return
            self.received.append(json.loads(message))
            ws.send(message)

        ws.on_message(from_page)
        server.on_message(from_server)

    def inject(self, frame: dict) -> None:
        assert self.route is not None, "the page has no socket yet"
        self.route.send(json.dumps(frame))

    def cut(self) -> None:
        """Closes the current connection (both sides), as a dropped network link would."""
        assert self.route is not None, "the page has no socket yet"
        self.route.close(code=4000, reason="cut by the test")

    def play_dead(self) -> None:
        """The current link goes silent: server frames are dropped and the page's close is never
        answered (its socket stays CLOSING, as over a link that is gone)."""
        index = len(self.routes) - 1
        self.dead.add(index)
        self.routes[index].on_close(lambda code, reason: None)

    def frames(self, kind: str) -> list[dict]:
        return [f for f in self.sent if f.get("type") == kind]

    def received_frames(self, kind: str) -> list[dict]:
        return [f for f in self.received if f.get("type") == kind]
