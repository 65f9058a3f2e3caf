"""The chat page in Chromium: sending, streaming, reloads, tabs, Stop, reactions and XSS safety."""

from __future__ import annotations

import time

import pytest

from tests.browser.conftest import ChatPage, normalized, saved_messages

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _expect():  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    return expect


def test_login_send_and_reply_streams_in_and_stays_after_reload(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    chat: ChatPage = chat_page().login()
    session_id = chat.new_chat()

    chat.send("Hello there, page")
    user = chat.messages("user").last
    expect(user.locator(".msg__body")).to_have_text("Hello there, page")
    reply = chat.last_reply()
    # Seen while streaming: some text, not all of it yet (read in the same moment as the status,
    # so the reply cannot finish between the check and the read).
    partial = chat.page.wait_for_function(
        """() => {
            const m = [...document.querySelectorAll('#messages article.msg[data-role=assistant]')].pop();
            return m && m.dataset.status === 'streaming' && Number(m.dataset.length) > 0
                && m.querySelector('.msg__body').innerText;
        }"""
    ).json_value()
    assert isinstance(partial, str) and partial
    chat.wait_status(reply, "complete")
    final = chat.body_text(reply)
    assert "You wrote" in final and "Hello there, page" in final
    assert len(partial) < len(final)

    saved = saved_messages(session_id)
    assert [m.role for m in saved] == ["user", "assistant"]
    assert normalized(final) == normalized(saved[1].content)
    assert reply.get_attribute("data-length") == str(len(saved[1].content))

    chat.reload()
    reply = chat.message(str(saved[1].pk))
    chat.wait_status(reply, "complete")
    assert normalized(chat.body_text(reply)) == normalized(saved[1].content)
    expect(chat.messages("user").last.locator(".msg__body")).to_have_text("Hello there, page")
    # The first message named the chat.
    expect(chat.page.locator("#session-title")).to_have_text("Hello there, page")


def test_reload_mid_stream_finishes_with_exactly_the_saved_text(chat_page) -> None:  # type: ignore[no-untyped-def]
    chat: ChatPage = chat_page().login()
    session_id = chat.new_chat()
    # About 8 s of deltas at the test's pace: far more than a reload takes, so the reply is
    # certainly still streaming when the page comes back.
    chat.send("/slow 160")
    reply = chat.last_reply()
    chat.page.wait_for_function(
        "() => /chunk 6 /.test(document.querySelector('#messages article.msg[data-role=assistant]:last-of-type .msg__body')?.innerText + ' ')"
    )
    chat.wait_status(reply, "streaming")

    chat.reload()
    reply = chat.last_reply()
    # Still streaming after the reload: the text so far came from session.ready, the rest live.
    chat.wait_status(reply, "streaming")
    chat.wait_status(reply, "complete")

    saved = saved_messages(session_id)[-1]
    assert saved.status == "complete"
    assert saved.content == "".join(f"chunk {i} " for i in range(1, 161))
    assert normalized(chat.body_text(reply)) == normalized(saved.content)
    assert reply.get_attribute("data-length") == str(len(saved.content))


def test_two_tabs_see_each_others_messages_and_reactions(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    one: ChatPage = chat_page().login()
    session_id = one.new_chat()
    two: ChatPage = chat_page().open(session_id)

    one.send("from tab one")
    expect(two.messages("user").last.locator(".msg__body")).to_have_text("from tab one")
    two.wait_status(two.last_reply(), "complete")
    one.wait_status(one.last_reply(), "complete")
    assert normalized(one.body_text(one.last_reply())) == normalized(two.body_text(two.last_reply()))

    two.send("and from tab two")
    expect(one.messages("user").last.locator(".msg__body")).to_have_text("and from tab two")
    one.wait_status(one.last_reply(), "complete")

    # Tab two reacts with 👍 on the first reply; tab one sees it live.
    first_reply_id = str(saved_messages(session_id)[1].pk)
    target = two.message(first_reply_id)
    target.hover()
    target.get_by_role("button", name="Add a reaction").click()
    two.page.get_by_role("menuitem", name="React with 👍").click()
    mine = two.message(first_reply_id).locator(".chip--me")
    expect(mine).to_contain_text("👍")
    expect(mine).to_contain_text("1")
    seen = one.message(first_reply_id).locator('.chip[data-emoji="👍"]')
    expect(seen).to_contain_text("1")
    expect(seen).to_have_attribute("aria-pressed", "true")

    # ... and takes it back from tab one.
    seen.click()
    expect(two.message(first_reply_id).locator('.chip[data-emoji="👍"]')).to_have_count(0)
    expect(one.message(first_reply_id).locator('.chip[data-emoji="👍"]')).to_have_count(0)

    from chat.models import Reaction

    assert Reaction.objects.filter(message_id=first_reply_id).count() == 0


def test_stop_cancels_the_reply_and_it_stops_growing(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    chat: ChatPage = chat_page().login()
    session_id = chat.new_chat()
    chat.send("/slow 100")
    reply = chat.last_reply()
    chat.page.wait_for_function(
        "() => /chunk 3 /.test(document.querySelector('#messages article.msg[data-role=assistant]:last-of-type .msg__body')?.innerText + ' ')"
    )
    expect(chat.page.get_by_label("Message", exact=True)).to_be_disabled()
    chat.page.get_by_role("button", name="Stop the reply").click()

    chat.wait_status(reply, "cancelled")
    expect(reply.locator(".msg__badge")).to_have_text("Stopped")
    expect(chat.page.get_by_role("button", name="Stop the reply")).to_be_hidden()
    expect(chat.page.get_by_label("Message", exact=True)).to_be_enabled()
    length = reply.get_attribute("data-length")
    text = chat.body_text(reply)
    time.sleep(1.0)
    assert reply.get_attribute("data-length") == length
    assert chat.body_text(reply) == text

    saved = saved_messages(session_id)[-1]
    assert saved.status == "cancelled"
    assert 0 < len(saved.content) < len("".join(f"chunk {i} " for i in range(1, 101)))
    assert normalized(text) == normalized(saved.content)


def test_markup_in_messages_and_replies_stays_inert(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    chat: ChatPage = chat_page().login()
    chat.new_chat()
    payload = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
    chat.send(payload)
    reply = chat.last_reply()
    chat.wait_status(reply, "complete")
    expect(chat.messages("user").last.locator(".msg__body")).to_have_text(payload)
    assert "You wrote" in chat.body_text(reply)

    # Raw HTML in a reply is shown as the text it is.
    assert "<script>window.__xss=2</script>" in chat.body_text(reply)
    chat.page.wait_for_timeout(300)  # an image error handler would have fired by now
    assert chat.page.evaluate("() => window.__xss") is None
    conversation = chat.page.locator("#messages")
    assert conversation.locator("img").count() == 0
    assert conversation.locator("script").count() == 0
    assert conversation.locator("[onerror]").count() == 0

    # Markdown links cannot carry script either.
    chat.send("[click me](javascript:window.__xss=3) and ![pic](http://127.0.0.1:9/leak?q=secret)")
    reply = chat.last_reply()
    chat.wait_status(reply, "complete")
    expect(reply.locator(".msg__body")).to_contain_text("click me")
    assert reply.locator('a[href^="javascript" i]').count() == 0
    for anchor in reply.locator("a", has_text="click me").all():
        anchor.click()
    assert reply.locator("img").count() == 0
    expect(reply.locator('a[href="http://127.0.0.1:9/leak?q=secret"]')).to_have_text("pic")

    chat.reload()
    chat.wait_status(chat.last_reply(), "complete")
    chat.page.wait_for_timeout(300)
    assert chat.page.evaluate("() => window.__xss") is None
    assert chat.page.locator("#messages img, #messages script, #messages [onerror]").count() == 0


def test_failed_reply_shows_its_error(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    chat: ChatPage = chat_page().login()
    chat.new_chat()
    chat.send("/fail")
    reply = chat.last_reply()
    chat.wait_status(reply, "failed")
    expect(reply.locator(".msg__badge")).to_have_text("Failed")
    expect(reply.locator(".msg__error")).to_contain_text("failed")


def test_sessions_can_be_renamed_switched_and_deleted(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    chat: ChatPage = chat_page().login()
    first = chat.new_chat()
    chat.send("first chat")
    chat.wait_status(chat.last_reply(), "complete")
    second = chat.new_chat()
    assert second != first
    expect(chat.messages()).to_have_count(0)

    item = chat.page.locator(f'#session-list li[data-id="{first}"]')
    item.hover()  # the actions show on hover or keyboard focus
    item.get_by_role("button", name="Rename").click()
    box = chat.page.get_by_label("Chat title")
    box.fill("Renamed chat")
    box.press("Enter")
    expect(item.locator(".session__title")).to_have_text("Renamed chat")

    item.locator(".session__open").click()
    chat.page.wait_for_url(f"**/?s={first}")
    expect(chat.messages("user").last.locator(".msg__body")).to_have_text("first chat")
    expect(chat.page.locator("#session-title")).to_have_text("Renamed chat")

    other = chat.page.locator(f'#session-list li[data-id="{second}"]')
    other.locator(".session__open").focus()
    chat.page.keyboard.press("Tab")
    chat.page.keyboard.press("Tab")
    expect(other.get_by_role("button", name="Delete")).to_be_focused()
    chat.page.keyboard.press("Enter")
    other.get_by_role("button", name="Confirm: delete this chat").click()
    expect(other).to_have_count(0)

    from sessions_app.models import ChatSession

    assert not ChatSession.objects.filter(pk=second).exists()
    assert ChatSession.objects.get(pk=first).title == "Renamed chat"


def test_direct_mode_and_agent_switch(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    chat: ChatPage = chat_page().login()
    session_id = chat.new_chat()
    chat.page.get_by_label("Mode").select_option("direct")
    agent = chat.page.get_by_label("Agent")
    expect(agent).to_be_enabled()
    agent.select_option("coder")
    expect(chat.page.locator("#messages .note").last).to_contain_text("Coder")
    chat.send("which agent?")
    reply = chat.last_reply()
    chat.wait_status(reply, "complete")
    expect(reply.locator(".msg__author")).to_have_text("Coder")

    from sessions_app.models import ChatSession

    session = ChatSession.objects.select_related("agent").get(pk=session_id)
    assert session.mode == "direct" and session.agent.slug == "coder"


def test_phone_layout_collapses_the_chat_list(browser, live) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    context = browser.new_context(viewport={"width": 390, "height": 760}, is_mobile=True, has_touch=True)
    try:
        chat = ChatPage(context.new_page(), live).login()
        sidebar = chat.page.locator("#sidebar")
        expect(sidebar).not_to_be_in_viewport()
        chat.page.get_by_role("button", name="Show chats").click()
        expect(sidebar).to_be_in_viewport()
        chat.page.get_by_role("button", name="New chat").click()
        chat.wait_connected()
        expect(sidebar).not_to_be_in_viewport()
        chat.send("small screen")
        chat.wait_status(chat.last_reply(), "complete")
        assert not chat.errors
    finally:
        context.close()


def test_server_restart_reconnects_and_marks_the_reply_interrupted(chat_page, live, daphne_server) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    chat: ChatPage = chat_page().login()
    session_id = chat.new_chat()
    chat.send("/slow 400")
    reply = chat.last_reply()
    chat.page.wait_for_function(
        "() => /chunk 3 /.test(document.querySelector('#messages article.msg[data-role=assistant]:last-of-type .msg__body')?.innerText + ' ')"
    )
    live.server.kill()
    expect(chat.page.locator("#conn")).to_have_attribute("data-state", "reconnecting")

    daphne_server(env={"DJANGO_ALLOW_ASYNC_UNSAFE": ""}, port=live.server.port)
    chat.wait_connected()
    chat.wait_status(reply, "interrupted")
    expect(reply.locator(".msg__badge")).to_have_text("Interrupted")
    saved = saved_messages(session_id)[-1]
    assert saved.status == "interrupted"
    assert normalized(chat.body_text(reply)) == normalized(saved.content)
    # The page is usable again on the new server.
    chat.send("after the restart")
    chat.wait_status(chat.last_reply(), "complete")


def test_the_header_shows_the_chats_tokens_and_every_tab_keeps_them_current(chat_page) -> None:  # type: ignore[no-untyped-def]
    from sessions_app.models import ChatSession

    expect = _expect()
    chat: ChatPage = chat_page().login()
    session_id = chat.new_chat()
    usage = chat.page.locator("#session-usage")
    expect(usage).to_be_hidden()  # a new chat has used nothing
    other: ChatPage = chat_page().open(session_id)

    def shown() -> str:
        row = ChatSession.objects.get(pk=session_id)
        total = row.prompt_tokens + row.completion_tokens
        assert total > 0
        return f"{total:,} tokens"

    chat.send("Count my tokens, please")
    chat.wait_status(chat.last_reply(), "complete")
    expect(usage).to_have_text(shown())
    expect(other.page.locator("#session-usage")).to_have_text(shown())  # the other tab saw the same reply end
    chat.send("And these ones too")
    chat.wait_status(chat.last_reply(), "complete")
    expect(usage).to_have_text(shown())
    assert "prompt" in (usage.get_attribute("title") or "")
    chat.reload()
    expect(chat.page.locator("#session-usage")).to_have_text(shown())


def test_a_long_reply_keeps_its_settled_blocks_while_it_streams_and_ends_rendered_whole(chat_page) -> None:  # type: ignore[no-untyped-def]
    chat: ChatPage = chat_page().login()
    session_id = chat.new_chat()
    chat.send("/long 16000")  # 80 pieces of 200 characters, 40 ms apart at the test server's pace
    reply = chat.last_reply()
    # A settled heading, taken while the reply streams: it must stay the very same node (rendered once).
    chat.page.wait_for_function(
        """() => {
            const m = [...document.querySelectorAll('#messages article.msg[data-role=assistant]')].pop();
            const h = m && m.dataset.status === 'streaming' && m.querySelectorAll('.md-stable h2')[1];
            if (h) window.__settled = h;
            return !!h;
        }"""
    )
    chat.page.wait_for_function(
        """() => {
            const m = [...document.querySelectorAll('#messages article.msg[data-role=assistant]')].pop();
            return m.dataset.status === 'streaming' && m.querySelectorAll('.md-stable h2').length >= 6;
        }"""
    )
    assert chat.page.evaluate("() => window.__settled.isConnected && window.__settled.textContent") == "Part 2"
    chat.wait_status(reply, "complete")
    saved = saved_messages(session_id)[-1]
    assert saved.status == "complete" and len(saved.content) == 16000
    assert reply.get_attribute("data-length") == "16000"
    # Ended: rendered whole, once, from the saved text.
    assert reply.locator(".md-stable, .md-tail").count() == 0
    assert reply.locator(".msg__body h2").count() == saved.content.count("## Part")
    assert reply.locator(".msg__body pre code").count() == saved.content.count("```python")
    assert not chat.page.evaluate("() => window.__settled.isConnected")
