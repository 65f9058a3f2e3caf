"""The page while its server restarts (SIGTERM drains it): the reply in flight ends whole, the page
reconnects on 4503, and a message the draining server refused (`unavailable`) goes again, once,
to the server that comes next on the same address (as a balancer sends it to another process)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from chat.models import Message
from sessions_app.services import session_create
from tests.browser.conftest import ChatPage, SocketTap, normalized, saved_messages
from tests.browser.test_agent_cards import _wait_for
from tests.ws import token_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SLOW_MS = 30_000


def slow_text(n: int) -> str:
    return "".join(f"chunk {i} " for i in range(1, n + 1))


def test_a_restart_finishes_the_reply_on_the_page_and_a_refused_message_goes_to_the_next_server(chat_page, live, daphne_server) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    chat: ChatPage = chat_page()
    tap = SocketTap(chat.page)
    chat.login()
    session_id = chat.new_chat()
    server = live.server

    # SIGTERM while a reply streams: the reply goes on to its end on the page, then the socket closes (4503) and the page reconnects.
    chat.send("/slow 50")
    reply = chat.last_reply()
    expect(reply.locator(".msg__body")).to_contain_text("chunk 3 ")
    server.terminate()
    chat.wait_status(reply, "complete", timeout=SLOW_MS)
    assert normalized(chat.body_text(reply)) == normalized(slow_text(50))
    expect(chat.page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=SLOW_MS)
    assert server.wait() == 0
    server = daphne_server(env={**server.extra_env, "SHUTDOWN_GRACE": "60"}, port=server.port)
    chat.wait_connected()

    # SIGTERM while a reply streams in another session (the drain waits for it), and a message sent
    # here meanwhile: refused, kept on the page, and sent again to the server that comes next.
    other = session_create(owner=live.user, title="elsewhere")
    request = urllib.request.Request(
        f"{live.url}/api/v1/messages/", data=json.dumps({"session": str(other.pk), "content": "/slow 100"}).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Token {token_for(live.user)}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
    _wait_for(lambda: Message.objects.filter(session=other, role="assistant").exclude(content="").exists(), chat.page)
    server.terminate()
    chat.send("sent during the restart")
    _wait_for(lambda: any(f.get("code") == "unavailable" for f in tap.received_frames("error")), chat.page)
    expect(chat.page.locator("#messages .msg--sending")).to_have_count(1)  # still on its way, not given back
    expect(chat.page.get_by_label("Message", exact=True)).to_have_value("")
    assert server.wait() == 0
    daphne_server(env=server.extra_env, port=server.port)
    chat.wait_connected()

    last = chat.messages("user").last
    expect(last.locator(".msg__body")).to_have_text("sent during the restart", timeout=SLOW_MS)
    expect(chat.page.locator("#messages .msg--sending")).to_have_count(0)
    chat.wait_status(chat.last_reply(), "complete", timeout=SLOW_MS)
    expect(chat.page.locator("#notice")).to_be_hidden()

    sends = [f for f in tap.frames("user_message") if f["content"] == "sent during the restart"]
    assert len(sends) == 2 and sends[0]["client_id"] == sends[1]["client_id"], sends
    saved = saved_messages(session_id)
    assert [(m.role, m.status) for m in saved] == [("user", "complete"), ("assistant", "complete")] * 2
    assert [m.content for m in saved if m.role == "user"] == ["/slow 50", "sent during the restart"]
    assert saved[1].content == slow_text(50)
    elsewhere = saved_messages(str(other.pk))
    assert [(m.role, m.status, m.content) for m in elsewhere] == [("user", "complete", "/slow 100"), ("assistant", "complete", slow_text(100))]
