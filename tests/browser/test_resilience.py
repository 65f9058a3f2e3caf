"""The page when things go wrong or get big: long histories, lost frames, dead links, races.

The socket runs through a `SocketTap` (conftest) that can drop, hold, inject and cut, so each
failure is made on purpose and the page's answer to it is checked against the server's database.
"""

from __future__ import annotations

import uuid

import pytest

from tests.browser.conftest import ChatPage, SocketTap, saved_messages
from tests.browser.test_agent_cards import _wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Expect's own default is 5 s; a send without a socket waits 5 s for one before REST.
SLOW_MS = 15_000


def _expect():  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    return expect


def _long_session(user, count: int):  # type: ignore[no-untyped-def]
    from sessions_app.models import ChatSession

    session = ChatSession.objects.create(owner=user, title="A long conversation")
    _add_messages(session, 1, count)
    return session


def _add_messages(session, first: int, count: int) -> None:  # type: ignore[no-untyped-def]
    """Messages written straight to the database: no frame tells an open page about them."""
    from django.db.models import F
    from django.utils import timezone

    from chat.models import Message
    from sessions_app.models import ChatSession

    Message.objects.bulk_create(
        [Message(session=session, seq=seq, role="user" if seq % 2 else "assistant", content=f"message number {seq}", status="complete") for seq in range(first, first + count)]
    )
    ChatSession.objects.filter(pk=session.pk).update(seq=first + count - 1, message_count=F("message_count") + count, updated_at=timezone.now())


def _seqs(chat: ChatPage) -> list[int]:
    return [int(s) for s in chat.messages().evaluate_all("els => els.map((e) => e.dataset.seq)")]


def test_a_long_conversation_opens_at_its_newest_messages_and_loads_older_ones_on_scroll(chat_page, live) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    session = _long_session(live.user, 250)
    chat: ChatPage = chat_page().login()
    pages: list[str] = []
    chat.page.on("request", lambda r: "/messages/" in r.url and r.method == "GET" and pages.append(r.url))
    chat.open(str(session.pk))

    # One request, for the newest page: the newest messages, in order, in view.
    expect(chat.messages()).to_have_count(100)
    assert _seqs(chat) == list(range(151, 251))
    expect(chat.messages().last).to_be_in_viewport()
    assert len(pages) == 1 and "from=end" in pages[0], pages
    expect(chat.page.get_by_role("button", name="Load earlier messages")).to_be_visible()

    # Scrolling to the top brings the page before, and the place is kept.
    for first in (51, 1):
        top_id = chat.messages().first.get_attribute("data-id")
        chat.page.locator("#conversation").evaluate("(c) => { c.scrollTop = 0; }")
        expect(chat.messages().first).to_have_attribute("data-seq", str(first))
        expect(chat.message(top_id)).to_be_in_viewport()
    assert _seqs(chat) == list(range(1, 251))
    expect(chat.page.get_by_role("button", name="Load earlier messages")).to_be_hidden()
    assert len(pages) == 3, pages


def test_after_a_reconnect_every_message_made_meanwhile_appears(chat_page, live) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    session = _long_session(live.user, 30)
    chat: ChatPage = chat_page()
    tap = SocketTap(chat.page)
    chat.login()
    chat.open(str(session.pk))
    expect(chat.messages()).to_have_count(30)

    # Two and a half pages are written while the page hears nothing; then the link drops.
    _add_messages(session, 31, 250)
    tap.cut()
    # The page reads back from the newest page until it meets what it knows: nothing is missed.
    expect(chat.messages()).to_have_count(280, timeout=SLOW_MS)
    assert _seqs(chat) == list(range(1, 281))
    chat.wait_connected()


def test_without_a_socket_a_message_goes_over_rest_and_the_composer_stays_usable(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    chat: ChatPage = chat_page()
    tap = SocketTap(chat.page)
    chat.login()
    session_id = chat.new_chat()
    tap.refuse = True
    tap.cut()
    expect(chat.page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
    posts: list = []
    chat.page.on("request", lambda r: r.method == "POST" and r.url.endswith("/api/v1/messages/") and posts.append(r))

    chat.send("sent while offline")
    box = chat.page.get_by_label("Message", exact=True)
    expect(box).to_be_disabled()
    # No socket came within 5 s: the message went over REST, and its bubble became the message.
    user = chat.messages("user").last
    expect(user.locator(".msg__body")).to_have_text("sent while offline", timeout=SLOW_MS)
    expect(chat.page.locator("#messages .msg--sending")).to_have_count(0)
    expect(box).to_be_enabled()
    assert len(posts) == 1 and posts[0].headers.get("idempotency-key")
    assert tap.frames("user_message") == []
    assert [m.content for m in saved_messages(session_id) if m.role == "user"] == ["sent while offline"]
    assert user.get_attribute("data-id") == str(next(m.pk for m in saved_messages(session_id) if m.role == "user"))

    # Back online: the socket catches up with the reply that ran meanwhile, and the page goes on.
    tap.refuse = False
    chat.page.evaluate("() => window.dispatchEvent(new Event('online'))")
    chat.wait_connected()
    reply = chat.last_reply()
    chat.wait_status(reply, "complete")
    assert "sent while offline" in chat.body_text(reply)
    chat.send("and back online")
    expect(chat.messages("user").last.locator(".msg__body")).to_have_text("and back online")
    chat.wait_status(chat.last_reply(), "complete")
    assert [m.content for m in saved_messages(session_id) if m.role == "user"] == ["sent while offline", "and back online"]
    assert len(tap.frames("user_message")) == 1


def test_a_message_lost_with_the_connection_is_sent_again(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    chat: ChatPage = chat_page()
    tap = SocketTap(chat.page, hold=("user_message",))
    chat.login()
    session_id = chat.new_chat()

    # The socket takes the frame, but it never reaches the server; then the link drops.
    chat.send("lost on the way")
    _wait_for(lambda: len(tap.frames("user_message")) == 1, chat.page)
    expect(chat.page.locator("#messages .msg--sending")).to_have_count(1)
    assert saved_messages(session_id) == []
    tap.hold.clear()
    tap.cut()

    # After the reconnect the same frame (same client_id) goes again, and the turn happens once.
    user = chat.messages("user").last
    expect(user.locator(".msg__body")).to_have_text("lost on the way", timeout=SLOW_MS)
    chat.wait_status(chat.last_reply(), "complete")
    expect(chat.page.locator("#messages .msg--sending")).to_have_count(0)
    expect(chat.page.get_by_label("Message", exact=True)).to_be_enabled()
    frames = tap.frames("user_message")
    assert len(frames) == 2 and frames[0]["client_id"] == frames[1]["client_id"], frames
    connections = [index for frame, index in zip(tap.sent, tap.sent_on, strict=True) if frame["type"] == "user_message"]
    assert connections[1] > connections[0], "sent again on the new connection"
    saved = saved_messages(session_id)
    assert [(m.role, m.content) for m in saved if m.role == "user"] == [("user", "lost on the way")]
    assert saved[0].client_id == frames[0]["client_id"]
    assert [m.role for m in saved] == ["user", "assistant"]


def test_a_delta_of_a_reply_the_page_does_not_know_asks_for_a_resync(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    chat: ChatPage = chat_page()
    tap = SocketTap(chat.page)
    chat.login()
    chat.new_chat()
    chat.send("hello")
    chat.wait_status(chat.last_reply(), "complete")

    stray = str(uuid.uuid4())
    tap.inject({"type": "message.delta", "message_id": stray, "offset": 7, "delta": "lost"})
    # The middle of a reply it has not seen: held as a placeholder with a gap ...
    expect(chat.message(stray)).to_have_count(1)
    expect(chat.message(stray)).to_have_attribute("data-status", "streaming")
    # ... that the gap timer asks the server about.
    _wait_for(lambda: len(tap.frames("resync")) == 1, chat.page)
    # The server knows no such reply (not active, not in the history): the placeholder goes.
    expect(chat.message(stray)).to_have_count(0)
    expect(chat.page.get_by_label("Message", exact=True)).to_be_enabled()


def test_a_gap_that_later_deltas_fill_needs_no_resync(chat_page) -> None:  # type: ignore[no-untyped-def]
    from tests.browser.conftest import normalized

    chat: ChatPage = chat_page()
    tap = SocketTap(chat.page)
    chat.login()
    session_id = chat.new_chat()
    chat.send("/slow 150")
    reply = chat.last_reply()
    length = chat.page.wait_for_function(
        """() => {
            const m = [...document.querySelectorAll('#messages article.msg[data-role=assistant]')].pop();
            return m && m.dataset.status === 'streaming' && Number(m.dataset.length) > 20 && Number(m.dataset.length);
        }"""
    ).json_value()
    reply_id = reply.get_attribute("data-id")

    # A delta well beyond the end (about ten deltas ahead) is a gap: it is dropped ...
    tap.inject({"type": "message.delta", "message_id": reply_id, "offset": length + 90, "delta": "#"})
    # ... and the stream fills it a moment later, so the gap is closed and no resync is needed.
    chat.page.wait_for_function(f"() => Number(document.querySelector('#messages article.msg[data-id=\"{reply_id}\"]').dataset.length) > {length + 91}")
    chat.page.wait_for_timeout(2500)  # the gap timer (1.5 s) has had its chance
    assert reply.get_attribute("data-status") == "streaming", "the check must happen while the reply streams"
    assert tap.frames("resync") == []

    chat.wait_status(reply, "complete")
    saved = saved_messages(session_id)[-1]
    assert saved.content == "".join(f"chunk {i} " for i in range(1, 151))
    assert normalized(chat.body_text(reply)) == normalized(saved.content)


def test_a_silent_link_is_given_up_and_replaced(chat_page) -> None:  # type: ignore[no-untyped-def]
    chat: ChatPage = chat_page()
    tap = SocketTap(chat.page)
    chat.page.clock.install()
    chat.login()
    session_id = chat.new_chat()
    assert len(tap.routes) == 1

    # The link goes silent, and closing it would never finish (no close ever comes back).
    tap.play_dead()
    chat.page.clock.fast_forward("01:20")  # the heartbeat finds 80 s without a frame
    _wait_for(lambda: len(tap.routes) == 2, chat.page)
    chat.wait_connected()
    chat.send("still here")
    chat.wait_status(chat.last_reply(), "complete")
    assert [m.content for m in saved_messages(session_id) if m.role == "user"] == ["still here"]
    assert all(index == 1 for frame, index in zip(tap.sent, tap.sent_on, strict=True) if frame["type"] == "user_message")


def test_a_rename_in_progress_survives_updates_of_the_list(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    one: ChatPage = chat_page().login()
    first = one.new_chat()
    one.send("chat one")
    one.wait_status(one.last_reply(), "complete")
    second = one.new_chat()
    one.send("chat two")
    one.wait_status(one.last_reply(), "complete")
    item = one.page.locator(f'#session-list li[data-id="{first}"]')
    item.locator(".session__open").click()
    one.page.wait_for_url(f"**/?s={first}")
    one.wait_connected()
    expect(one.page.locator("#session-list li").first).to_have_attribute("data-id", second)
    two: ChatPage = chat_page().open(first)

    item.hover()
    item.get_by_role("button", name="Rename").click()
    box = one.page.get_by_label("Chat title")
    box.fill("Renamed while")
    # Another tab writes in this chat: the list is updated under the input (the chat moves up).
    two.send("from the other tab")
    expect(one.messages("user").last.locator(".msg__body")).to_have_text("from the other tab")
    expect(one.page.locator("#session-list li").first).to_have_attribute("data-id", first)
    expect(box).to_be_focused()
    expect(box).to_have_value("Renamed while")
    box.press("End")
    box.press_sequentially(" busy")
    box.press("Enter")
    expect(item.locator(".session__title")).to_have_text("Renamed while busy")
    expect(one.page.get_by_label("Chat title")).to_have_count(0)
    one.wait_status(one.last_reply(), "complete")

    from sessions_app.models import ChatSession

    assert ChatSession.objects.get(pk=first).title == "Renamed while busy"


def test_taking_back_a_reaction_does_not_undo_a_newer_update(chat_page) -> None:  # type: ignore[no-untyped-def]
    from chat.models import Reaction

    expect = _expect()
    one: ChatPage = chat_page().login()
    session_id = one.new_chat()
    one.send("react to this")
    one.wait_status(one.last_reply(), "complete")
    reply_id = str(saved_messages(session_id)[-1].pk)
    two: ChatPage = chat_page().open(session_id)

    target = one.message(reply_id)
    target.hover()
    target.get_by_role("button", name="Add a reaction").click()
    one.page.get_by_role("menuitem", name="React with 👍").click()
    thumbs = target.locator('.chip[data-emoji="👍"]')
    expect(thumbs).to_have_attribute("aria-pressed", "true")
    expect(two.message(reply_id).locator('.chip[data-emoji="👍"]')).to_have_count(1)

    # Tab one takes its 👍 back. The server does it at once; its answer is held back a while.
    held: list = []

    def hold_delete(route) -> None:  # type: ignore[no-untyped-def]
        if route.request.method == "DELETE":
            held.append((route, route.fetch()))
        else:
            route.continue_()

    one.page.route("**/api/v1/messages/*/reactions/**", hold_delete)
    thumbs.click()
    expect(thumbs).to_have_count(0)  # at once, before any answer
    _wait_for(lambda: bool(held), one.page)
    assert Reaction.objects.filter(message_id=reply_id).count() == 0

    # Meanwhile tab two adds 🎉: tab one hears of it (reaction.updated) before its answer lands.
    other = two.message(reply_id)
    other.hover()
    other.get_by_role("button", name="Add a reaction").click()
    two.page.get_by_role("menuitem", name="React with 🎉").click()
    party = target.locator('.chip[data-emoji="🎉"]')
    expect(party).to_have_count(1)
    _wait_for(lambda: Reaction.objects.filter(message_id=reply_id, emoji="🎉").count() == 1, one.page)

    # The late answer must not bring back the list from before the 🎉.
    route, response = held[0]
    with one.page.expect_request_finished(lambda r: r.method == "DELETE"):
        route.fulfill(response=response)
    one.page.evaluate("() => new Promise((resolve) => setTimeout(resolve, 100))")
    expect(party).to_have_count(1)
    expect(thumbs).to_have_count(0)
    expect(two.message(reply_id).locator('.chip[data-emoji="🎉"]')).to_have_count(1)
    expect(two.message(reply_id).locator('.chip[data-emoji="👍"]')).to_have_count(0)
