"""Search in the page: the box in the sidebar, marked snippets, and a result that opens its message deep in history."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import ChatPage

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _expect():  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    return expect


def _conversation(user, title: str, count: int, special: dict[int, str]):  # type: ignore[no-untyped-def]
    from chat.models import Message
    from sessions_app.models import ChatSession

    session = ChatSession.objects.create(owner=user, title=title, seq=count, message_count=count)
    Message.objects.bulk_create(
        [
            Message(session=session, seq=seq, role="user" if seq % 2 else "assistant", content=special.get(seq, f"message number {seq}"), status="complete")
            for seq in range(1, count + 1)
        ]
    )
    return session


def test_a_search_result_opens_its_message_far_back_in_another_chat(chat_page, live) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    # The message is 240 messages back: three pages of history before it is on the page.
    old = _conversation(live.user, "Travel log", 250, {10: "We saw a narwhal near the fjord"})
    _conversation(live.user, "Recent", 3, {2: 'A <img src=x onerror="window.hacked=1"> narwhal drawing'})
    chat: ChatPage = chat_page().login()
    box = chat.page.get_by_label("Search your messages")
    box.fill("narwh")
    hits = chat.page.locator("#search-list .search-hit")
    expect(hits).to_have_count(2)
    expect(chat.page.locator("#search-status")).to_have_text("2 messages found")
    expect(chat.page.locator("#sessions")).to_be_hidden()
    # Snippets are text with the match marked; markup in a message stays text.
    expect(hits.locator("mark").first).to_have_text("narwhal")
    assert chat.page.locator("#search-list img").count() == 0
    assert chat.page.evaluate("() => window.hacked") is None
    travel = hits.filter(has_text="Travel log")
    expect(travel).to_contain_text("We saw a narwhal near the fjord")

    travel.click()
    message = chat.page.locator('#messages article.msg[data-seq="10"]')
    expect(message).to_be_in_viewport()
    expect(message).to_have_class(re.compile(r"\bmsg--found\b"))
    expect(chat.page.locator("#session-title")).to_have_text("Travel log")
    assert f"s={old.pk}" in chat.page.url and "m=" in chat.page.url
    # A reload of that address opens the same message again.
    chat.reload()
    expect(chat.page.locator('#messages article.msg[data-seq="10"]')).to_be_in_viewport()

    box = chat.page.get_by_label("Search your messages")
    box.fill("nothing-like-this-anywhere")
    expect(chat.page.locator("#search-status")).to_have_text("Nothing found.")
    box.press("Escape")
    expect(chat.page.locator("#sessions")).to_be_visible()
    expect(chat.page.locator("#search-results")).to_be_hidden()
