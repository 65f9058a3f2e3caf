"""Versions and the queue in the page: Regenerate, Edit and the version switcher (followed by a
second tab), messages queued while a reply runs and their Cancel, interrupting a reply, and a
search result on another branch. Each is checked on the page and in the server's database."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import ChatPage, SocketTap, normalized, saved_messages
from tests.browser.test_agent_cards import _wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _expect():  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    return expect


def _session(session_id: str):  # type: ignore[no-untyped-def]
    from sessions_app.models import ChatSession

    return ChatSession.objects.get(pk=session_id)


def _queued(session_id: str) -> list[str]:
    from chat.models import QueuedMessage

    return list(QueuedMessage.objects.filter(session_id=session_id).order_by("position").values_list("content", flat=True))


def _wait_chunk(chat: ChatPage, n: int) -> None:
    """Waits until the last reply on the page shows `chunk n` of a `/slow` reply."""
    chat.page.wait_for_function(
        "(n) => new RegExp(`chunk ${n} `).test([...document.querySelectorAll('#messages article.msg[data-role=assistant]')].pop()?.querySelector('.msg__body').innerText + ' ')",
        arg=n,
    )


def _version_label(chat: ChatPage, message_id: str):  # type: ignore[no-untyped-def]
    return chat.message(message_id).locator(".versions__label")


def _set_on_busy(chat: ChatPage, label: str, value: str) -> None:
    select = chat.page.get_by_label("Messages sent while a reply runs")
    select.select_option(label=label)
    _wait_for(lambda: _session(chat.session_id).on_busy == value, chat.page)


def test_regenerate_makes_a_second_version_that_the_switcher_and_another_tab_follow(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    one: ChatPage = chat_page().login()
    session_id = one.new_chat()
    # A first version that is visibly different from the second: stopped after a few pieces.
    one.send("/slow 60")
    _wait_chunk(one, 3)
    one.page.get_by_role("button", name="Stop the reply").click()
    first = one.last_reply()
    one.wait_status(first, "cancelled")
    first_id = first.get_attribute("data-id")
    two: ChatPage = chat_page().open(session_id)
    two.wait_status(two.message(first_id), "cancelled")
    # Nothing to switch between yet.
    expect(one.message(first_id).locator(".versions")).to_have_count(0)

    one.message(first_id).get_by_role("button", name="Regenerate this reply").click()
    expect(one.message(first_id)).to_have_count(0)
    second = one.last_reply()
    one.wait_status(second, "complete", timeout=30_000)
    second_id = second.get_attribute("data-id")
    assert second_id != first_id
    expect(_version_label(one, second_id)).to_have_text("2 / 2")
    expect(one.messages("assistant")).to_have_count(1)

    user, old, new = saved_messages(session_id)
    assert (str(old.pk), str(new.pk)) == (first_id, second_id)
    assert old.status == "cancelled" and new.status == "complete"
    assert old.parent_id == new.parent_id == user.pk
    assert new.content == "".join(f"chunk {i} " for i in range(1, 61))
    assert _session(session_id).leaf_id == new.pk
    assert normalized(one.body_text(second)) == normalized(new.content)

    # The other tab followed the new branch without a reload.
    two.wait_status(two.message(second_id), "complete")
    expect(two.message(first_id)).to_have_count(0)
    expect(_version_label(two, second_id)).to_have_text("2 / 2")

    # ‹ brings the first version back, with its text and its badge, in both tabs.
    one.message(second_id).get_by_role("button", name="Previous version").click()
    shown = one.message(first_id)
    expect(_version_label(one, first_id)).to_have_text("1 / 2")
    expect(shown.locator(".msg__badge")).to_have_text("Stopped")
    assert normalized(one.body_text(shown)) == normalized(old.content)
    expect(one.message(second_id)).to_have_count(0)
    expect(shown.get_by_role("button", name="Previous version")).to_be_disabled()
    _wait_for(lambda: _session(session_id).leaf_id == old.pk, one.page)
    expect(_version_label(two, first_id)).to_have_text("1 / 2")
    expect(two.message(second_id)).to_have_count(0)
    assert normalized(two.body_text(two.message(first_id))) == normalized(old.content)

    # › from the other tab goes forward again, and the first tab follows.
    two.message(first_id).get_by_role("button", name="Next version").click()
    expect(_version_label(one, second_id)).to_have_text("2 / 2")
    expect(one.message(first_id)).to_have_count(0)
    _wait_for(lambda: _session(session_id).leaf_id == new.pk, one.page)
    # Nothing was made or lost by switching.
    assert [m.pk for m in saved_messages(session_id)] == [user.pk, old.pk, new.pk]


def test_editing_a_message_answers_the_new_text_and_keeps_the_old_branch_reachable(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    chat: ChatPage = chat_page().login()
    session_id = chat.new_chat()
    chat.send("first question")
    expect(chat.messages()).to_have_count(2)
    chat.wait_status(chat.last_reply(), "complete")
    chat.send("second question")
    expect(chat.messages()).to_have_count(4)
    chat.wait_status(chat.last_reply(), "complete")
    first_user, first_reply, old_user, old_reply = saved_messages(session_id)

    # Escape leaves the message as it was.
    target = chat.message(str(old_user.pk))
    target.get_by_role("button", name="Edit this message").click()
    editor = target.get_by_label("Edit your message")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("second question")
    editor.press("Escape")
    expect(target.get_by_label("Edit your message")).to_have_count(0)
    expect(target.locator(".msg__body")).to_have_text("second question")
    expect(target.get_by_role("button", name="Edit this message")).to_be_focused()

    # Enter saves: the edited text is answered on a new branch.
    target.get_by_role("button", name="Edit this message").click()
    editor = target.get_by_label("Edit your message")
    editor.fill("second question, <b>edited</b>")
    editor.press("Enter")
    expect(chat.message(str(old_user.pk))).to_have_count(0)
    expect(chat.message(str(old_reply.pk))).to_have_count(0)
    reply = chat.last_reply()
    chat.wait_status(reply, "complete")
    assert "second question, <b>edited</b>" in chat.body_text(reply)
    user = chat.messages("user").last
    expect(user.locator(".msg__body")).to_have_text("second question, <b>edited</b>")
    assert chat.page.locator("#messages b").count() == 0
    expect(user.locator(".versions__label")).to_have_text("2 / 2")
    # The exchange before the edited message stays as it was.
    expect(chat.message(str(first_user.pk))).to_be_visible()
    expect(chat.message(str(first_reply.pk))).to_be_visible()

    saved = saved_messages(session_id)
    assert len(saved) == 6
    new_user, new_reply = saved[4], saved[5]
    assert new_user.content == "second question, <b>edited</b>" and new_user.role == "user"
    assert new_user.parent_id == old_user.parent_id == first_reply.pk
    assert new_reply.reply_to_id == new_user.pk and new_reply.parent_id == new_user.pk
    assert user.get_attribute("data-id") == str(new_user.pk)
    assert _session(session_id).leaf_id == new_reply.pk
    assert normalized(chat.body_text(reply)) == normalized(new_reply.content)

    # The old branch is one step away, on the user's message (here with the keyboard: the focus
    # then moves to the switcher of the version shown).
    user.get_by_role("button", name="Previous version").focus()
    chat.page.keyboard.press("Enter")
    expect(chat.message(str(old_user.pk)).locator(".versions__label")).to_have_text("1 / 2")
    expect(chat.message(str(old_user.pk)).get_by_role("button", name="Next version")).to_be_focused()
    expect(chat.message(str(old_reply.pk))).to_be_visible()
    assert normalized(chat.body_text(chat.message(str(old_reply.pk)))) == normalized(old_reply.content)
    expect(chat.message(str(new_user.pk))).to_have_count(0)
    _wait_for(lambda: _session(session_id).leaf_id == old_reply.pk, chat.page)
    # ... and stays after a reload: the page shows the session's active branch.
    chat.reload()
    expect(chat.message(str(old_reply.pk))).to_be_visible()
    expect(chat.message(str(new_user.pk))).to_have_count(0)
    expect(chat.messages()).to_have_count(4)


def test_messages_sent_while_a_reply_runs_are_queued_and_answered_in_order(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    one: ChatPage = chat_page().login()
    session_id = one.new_chat()
    two: ChatPage = chat_page().open(session_id)
    _set_on_busy(one, "Queue", "enqueue")
    expect(two.page.get_by_label("Messages sent while a reply runs")).to_have_value("enqueue")

    one.send("/slow 100")
    _wait_chunk(one, 2)
    box = one.page.get_by_label("Message", exact=True)
    # The box stays usable while the reply runs.
    expect(box).to_be_enabled()
    one.send("first in line")
    one.send("second in line")
    queued = one.page.locator("#queue-list .queued")
    expect(queued).to_have_count(2)
    expect(queued.nth(0).locator(".queued__body")).to_have_text("first in line")
    expect(queued.nth(1).locator(".queued__body")).to_have_text("second in line")
    expect(one.page.locator("#messages .msg--sending")).to_have_count(0)
    # The other tab shows the same queue.
    expect(two.page.locator("#queue-list .queued .queued__body")).to_have_text(["first in line", "second in line"])
    assert _queued(session_id) == ["first in line", "second in line"]
    assert one.last_reply().get_attribute("data-status") == "streaming"

    # When the reply ends they are answered, one after the other, and leave the queue.
    expect(queued).to_have_count(0, timeout=30_000)
    expect(two.page.locator("#queue-list .queued")).to_have_count(0)
    expect(one.messages()).to_have_count(6, timeout=30_000)
    for page in (one, two):
        page.wait_status(page.last_reply(), "complete")
        expect(page.messages("user").locator(".msg__body")).to_have_text(["/slow 100", "first in line", "second in line"])
    saved = saved_messages(session_id)
    assert [(m.role, m.status) for m in saved] == [("user", "complete"), ("assistant", "complete")] * 3
    assert [m.content for m in saved if m.role == "user"] == ["/slow 100", "first in line", "second in line"]
    assert "first in line" in saved[3].content and "second in line" in saved[5].content
    assert saved[3].reply_to_id == saved[2].pk and saved[5].reply_to_id == saved[4].pk
    assert _queued(session_id) == []
    replies = one.messages("assistant")
    assert normalized(one.body_text(replies.nth(1))) == normalized(saved[3].content)
    assert normalized(one.body_text(replies.nth(2))) == normalized(saved[5].content)


def test_a_cancelled_queued_message_is_never_answered(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    one: ChatPage = chat_page().login()
    session_id = one.new_chat()
    _set_on_busy(one, "Queue", "enqueue")
    two: ChatPage = chat_page().open(session_id)

    one.send("/slow 100")
    _wait_chunk(one, 2)
    one.send("keep this one")
    one.send("drop this one")
    queued = one.page.locator("#queue-list .queued")
    expect(queued).to_have_count(2)
    expect(two.page.locator("#queue-list .queued")).to_have_count(2)

    two.page.get_by_role("button", name="Cancel the queued message “drop this one”").click()
    expect(queued).to_have_count(1)
    expect(queued.locator(".queued__body")).to_have_text("keep this one")
    expect(two.page.locator("#queue-list .queued .queued__body")).to_have_text(["keep this one"])
    assert _queued(session_id) == ["keep this one"]

    expect(queued).to_have_count(0, timeout=30_000)
    one.wait_status(one.last_reply(), "complete")
    expect(one.messages()).to_have_count(4)
    expect(one.messages("user").locator(".msg__body")).to_have_text(["/slow 100", "keep this one"])
    # Well after its turn would have come, it was never sent.
    _wait_for(lambda: saved_messages(session_id)[-1].status == "complete", one.page)
    saved = saved_messages(session_id)
    assert [m.content for m in saved if m.role == "user"] == ["/slow 100", "keep this one"]
    assert not any("drop this one" in m.content for m in saved)
    assert _queued(session_id) == []


def test_interrupt_stops_the_running_reply_and_answers_the_new_message(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    chat: ChatPage = chat_page().login()
    session_id = chat.new_chat()
    _set_on_busy(chat, "Interrupt", "interrupt")

    chat.send("/slow 200")
    running = chat.last_reply()
    _wait_chunk(chat, 4)
    running_id = running.get_attribute("data-id")
    chat.send("never mind, answer this")

    stopped = chat.message(running_id)
    chat.wait_status(stopped, "cancelled")
    expect(stopped.locator(".msg__badge")).to_have_text("Stopped")
    reply = chat.last_reply()
    expect(reply).not_to_have_attribute("data-id", running_id)
    chat.wait_status(reply, "complete")
    assert "never mind, answer this" in chat.body_text(reply)
    expect(chat.messages("user").locator(".msg__body")).to_have_text(["/slow 200", "never mind, answer this"])
    expect(chat.page.locator("#queue-list .queued")).to_have_count(0)

    saved = saved_messages(session_id)
    assert [(m.role, m.status) for m in saved] == [("user", "complete"), ("assistant", "cancelled"), ("user", "complete"), ("assistant", "complete")]
    cut = saved[1].content
    assert cut.startswith("chunk 1 chunk 2 chunk 3 chunk 4 ") and len(cut) < len("".join(f"chunk {i} " for i in range(1, 201)))
    assert normalized(chat.body_text(stopped)) == normalized(cut)
    assert normalized(chat.body_text(reply)) == normalized(saved[3].content)


def test_a_search_result_on_another_branch_switches_to_it(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    chat: ChatPage = chat_page().login()
    session_id = chat.new_chat()
    chat.send("tell me about the quokka")
    expect(chat.messages()).to_have_count(2)
    chat.wait_status(chat.last_reply(), "complete")
    old_user, old_reply = saved_messages(session_id)
    chat.messages("user").last.get_by_role("button", name="Edit this message").click()
    editor = chat.page.get_by_label("Edit your message")
    editor.fill("tell me about the wombat")
    chat.page.get_by_role("button", name="Save and send the edited message").click()
    expect(chat.message(str(old_user.pk))).to_have_count(0)
    expect(chat.message(str(old_reply.pk))).to_have_count(0)
    chat.wait_status(chat.last_reply(), "complete")
    new_reply = saved_messages(session_id)[-1]
    assert new_reply.status == "complete" and "wombat" in new_reply.content
    assert _session(session_id).leaf_id == new_reply.pk

    chat.page.get_by_label("Search your messages").fill("quokka")
    # The user's own message (the reply quotes it too): on the branch that is no longer shown.
    hit = chat.page.locator("#search-list .search-hit").filter(has=chat.page.locator(".search-hit__title", has_text=re.compile(r"· You$")))
    expect(hit).to_have_count(1)
    hit.click()
    found = chat.message(str(old_user.pk))
    expect(found).to_be_in_viewport()
    expect(found).to_have_class(re.compile(r"\bmsg--found\b"))
    expect(found.locator(".versions__label")).to_have_text("1 / 2")
    expect(chat.message(str(old_reply.pk))).to_be_visible()
    expect(chat.messages("user")).to_have_count(1)
    _wait_for(lambda: _session(session_id).leaf_id == old_reply.pk, chat.page)
    assert f"m={old_user.pk}" in chat.page.url


def test_an_edit_without_a_socket_goes_over_rest_and_a_switch_made_meanwhile_is_followed_after_reconnecting(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    one: ChatPage = chat_page()
    tap = SocketTap(one.page)
    one.login()
    session_id = one.new_chat()
    one.send("hello from before")
    expect(one.messages()).to_have_count(2)
    one.wait_status(one.last_reply(), "complete")
    old_user, old_reply = saved_messages(session_id)

    # The link goes and stays away: the edit waits 5 s for a socket, then goes over REST.
    tap.refuse = True
    tap.cut()
    expect(one.page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
    posts: list = []
    one.page.on("request", lambda r: r.method == "POST" and r.url.endswith("/api/v1/messages/") and posts.append(r.post_data_json))
    one.message(str(old_user.pk)).get_by_role("button", name="Edit this message").click()
    one.page.get_by_label("Edit your message").fill("hello while away")
    one.page.get_by_label("Edit your message").press("Enter")
    # The page read the new branch itself (no frame could tell it).
    expect(one.message(str(old_user.pk))).to_have_count(0, timeout=15_000)
    user = one.messages("user").last
    expect(user.locator(".msg__body")).to_have_text("hello while away")
    expect(user.locator(".versions__label")).to_have_text("2 / 2")
    expect(one.page.locator("#messages .msg--sending")).to_have_count(0)
    assert [f["content"] for f in tap.frames("user_message")] == ["hello from before"]
    assert len(posts) == 1 and posts[0]["edit_of"] == str(old_user.pk) and posts[0]["content"] == "hello while away"
    saved = saved_messages(session_id)
    assert [m.content for m in saved if m.role == "user"] == ["hello from before", "hello while away"]
    assert saved[2].parent_id is None and old_user.parent_id is None
    assert user.get_attribute("data-id") == str(saved[2].pk)
    _wait_for(lambda: saved_messages(session_id)[-1].status == "complete", one.page)

    # Meanwhile another tab goes back to the first version.
    two: ChatPage = chat_page().open(session_id)
    two.messages("user").last.get_by_role("button", name="Previous version").click()
    expect(two.message(str(old_user.pk)).locator(".versions__label")).to_have_text("1 / 2")
    _wait_for(lambda: _session(session_id).leaf_id == old_reply.pk, two.page)

    # Back online, the first tab reads the branch again and shows the one now active.
    tap.refuse = False
    one.page.evaluate("() => window.dispatchEvent(new Event('online'))")
    one.wait_connected()
    expect(one.message(str(old_user.pk)).locator(".versions__label")).to_have_text("1 / 2")
    expect(one.message(str(old_reply.pk))).to_be_visible()
    expect(one.message(str(saved[2].pk))).to_have_count(0)
    expect(one.messages()).to_have_count(2)
    assert normalized(one.body_text(one.message(str(old_reply.pk)))) == normalized(old_reply.content)
