"""Cards of the agent frames in Chromium: approvals, plans and client-side tool calls."""

from __future__ import annotations

import json
import time

import pytest

from tests.browser.conftest import ChatPage, Hook, SocketTap, saved_messages

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _expect():  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    return expect


def _talk_to(chat: ChatPage, slug: str, name: str) -> None:
    expect = _expect()
    chat.page.get_by_label("Mode").select_option("direct")
    agent = chat.page.get_by_label("Agent")
    expect(agent).to_be_enabled()
    if agent.input_value() != slug:
        agent.select_option(slug)
    expect(chat.page.locator("#messages .note").last).to_contain_text(name)


def _wait_turn_done(chat: ChatPage) -> None:
    expect = _expect()
    expect(chat.page.locator('#messages article.msg[data-status="streaming"]')).to_have_count(0)
    expect(chat.page.get_by_label("Message", exact=True)).to_be_enabled()


def _wait_for(predicate, page=None, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    """Polls; with a page, waits through Playwright so its events (socket routes) keep flowing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if page is not None:
            page.wait_for_timeout(100)
        else:
            time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _wait_reply_after(chat: ChatPage, session_id: str, seq: int):  # type: ignore[no-untyped-def]
    """Waits for the turn that goes on after message `seq` (a decision or a tool result) to end.

    In the database: an assistant reply after `seq` exists and nothing in the session streams any
    more; then on the page: that reply (by id) shows the same status and the composer is free.
    """
    found: dict = {}

    def ended() -> bool:
        saved = saved_messages(session_id)
        after = [m for m in saved if m.seq > seq and m.role == "assistant" and m.type == "text"]
        if after and not any(m.status == "streaming" for m in saved):
            found["reply"] = after[-1]
            return True
        return False

    _wait_for(ended, chat.page, timeout=20.0)
    reply = found["reply"]
    assert reply.status == "complete", (reply.status, reply.error)
    chat.wait_status(chat.message(str(reply.pk)), "complete")
    _wait_turn_done(chat)
    return reply


def test_approve_a_tool_call_and_reject_another(chat_page, webhook: Hook) -> None:  # type: ignore[no-untyped-def]
    from chat.models import Approval, ToolCall

    expect = _expect()
    chat: ChatPage = chat_page().login()
    session_id = chat.new_chat()
    _talk_to(chat, "researcher", "Researcher")
    command = f"/tool webhook_post {json.dumps({'url': webhook.url, 'payload': {'a': 1}})}"

    chat.send(command)
    card = chat.page.locator(".pending--approval").last
    expect(card).to_contain_text("webhook_post")
    expect(card.locator(".card__args")).to_contain_text(webhook.url)
    assert webhook.requests == []

    # The open approval survives a reload (it comes back in session.ready.pending).
    chat.reload()
    card = chat.page.locator(".pending--approval").last
    expect(card).to_contain_text("webhook_post")
    first = Approval.objects.select_related("message").get(pk=card.get_attribute("data-pending-id"))
    card.get_by_role("button", name="Approve webhook_post").click()
    expect(card).to_have_attribute("data-state", "approved")
    _wait_for(lambda: len(webhook.requests) == 1, chat.page)
    body = webhook.requests[0]["body"]
    assert body == {"a": 1} or (isinstance(body, dict) and body.get("payload") == {"a": 1}), body
    # The turn goes on after the call: its continuation must end before the next message.
    _wait_reply_after(chat, session_id, first.message.seq)

    chat.send(command)
    expect(chat.page.locator(".pending--approval")).to_have_count(2)
    second = chat.page.locator(".pending--approval").last
    rejected = Approval.objects.select_related("message").get(pk=second.get_attribute("data-pending-id"))
    expect(second.get_by_role("button", name="Reject webhook_post")).to_be_enabled()
    second.get_by_role("button", name="Reject webhook_post").click()
    expect(second).to_have_attribute("data-state", "rejected")
    # The call is rejected for good, and the turn has ended after it: it can never run now.
    _wait_for(lambda: ToolCall.objects.get(pk=rejected.tool_call_id).status == "rejected", chat.page)
    _wait_reply_after(chat, session_id, rejected.message.seq)
    assert ToolCall.objects.get(pk=rejected.tool_call_id).status == "rejected"
    assert ToolCall.objects.get(pk=first.tool_call_id).status == "done"
    assert len(webhook.requests) == 1, "a rejected call must not run"

    # After a reload nothing is open, and the history cards show how each was decided.
    chat.reload()
    approvals = chat.page.locator('#messages article.msg[data-type="approval"]')
    expect(approvals).to_have_count(2)
    expect(approvals.nth(0)).to_have_attribute("data-decision", "approved")
    expect(approvals.nth(0).locator(".card__badge")).to_have_text(["Approved"])
    expect(approvals.nth(1)).to_have_attribute("data-decision", "rejected")
    expect(approvals.nth(1).locator(".card__badge")).to_have_text(["Rejected"])
    calls = chat.page.locator('#messages article.msg[data-type="tool_call"]')
    expect(calls).to_have_count(2)
    expect(calls.nth(0).locator(".card__badge")).to_have_text(["Done"])
    expect(calls.nth(1).locator(".card__badge")).to_have_text(["Rejected"])
    expect(chat.page.locator(".pending")).to_have_count(0)


def test_approve_a_plan(chat_page) -> None:  # type: ignore[no-untyped-def]
    expect = _expect()
    chat: ChatPage = chat_page().login()
    session_id = chat.new_chat()
    chat.send("/plan research the topic; write a summary")

    card = chat.page.locator(".pending--plan").last
    steps = card.locator(".plan-steps li")
    expect(steps).to_have_count(2)
    expect(steps.nth(0)).to_contain_text("research the topic")
    expect(steps.nth(1)).to_contain_text("write a summary")
    before = len(saved_messages(session_id))

    card.get_by_role("button", name="Approve the plan").click()
    # The card keeps the decision while its status line follows the plan to its end.
    expect(card).to_have_attribute("data-state", "approved")
    expect(card).to_have_attribute("data-progress", "done", timeout=15000)
    expect(card.locator(".pending__status")).to_contain_text("every step is done")
    expect(card).to_have_attribute("data-state", "approved")
    _wait_turn_done(chat)
    steps_saved = [m for m in saved_messages(session_id)[before:] if m.role == "assistant" and m.content.startswith("Step ")]
    assert [m.content.split(" (")[0] for m in steps_saved] == ["Step 1 of 2", "Step 2 of 2"], [m.content for m in steps_saved]
    assert all(m.status == "complete" for m in steps_saved)
    # The steps' replies are on the page too, in order.
    done = chat.page.locator('#messages article.msg[data-role="assistant"][data-status="complete"]')
    expect(done.filter(has_text="Step 1 of 2")).to_have_count(1)
    expect(done.filter(has_text="Step 2 of 2")).to_have_count(1)
    assert not chat.page.locator("#notice").is_visible() or "error" not in chat.page.locator("#notice").inner_text().lower()

    # After a reload the plan's history card says it was approved and is done.
    chat.reload()
    plan = chat.page.locator('#messages article.msg[data-type="plan"]')
    expect(plan).to_have_count(1)
    expect(plan).to_have_attribute("data-decision", "approved")
    expect(plan).to_have_attribute("data-progress", "done")
    expect(plan.locator(".card__badge")).to_have_text(["Approved", "Done"])


def test_client_tool_runs_in_the_page(chat_page) -> None:  # type: ignore[no-untyped-def]
    from chat.models import ToolCall

    expect = _expect()
    chat: ChatPage = chat_page().login()
    session_id = chat.new_chat()
    _talk_to(chat, "assistant", "Assistant")
    chat.send("/tool client_time {}")
    card = chat.page.locator(".pending--tool_call").last
    expect(card).to_contain_text("client_time")
    expect(card).to_have_attribute("data-state", "answered")
    call = ToolCall.objects.select_related("message").get(pk=card.get_attribute("data-pending-id"))
    # The page has sent the result; the server stores it a moment later.
    _wait_for(lambda: any(m.type == "tool_result" for m in saved_messages(session_id)), chat.page)
    results = [m for m in saved_messages(session_id) if m.type == "tool_result"]
    blob = json.dumps({"content": results[-1].content, "metadata": results[-1].metadata})
    assert "timezone" in blob and "iso" in blob
    _wait_reply_after(chat, session_id, call.message.seq)
    assert ToolCall.objects.get(pk=call.pk).status == "done"


def test_a_tool_result_that_could_not_be_sent_goes_after_reconnecting(chat_page) -> None:  # type: ignore[no-untyped-def]
    """The link drops just as the browser has the result: it is sent on the next connection."""
    from chat.models import ToolCall

    expect = _expect()
    chat: ChatPage = chat_page()
    tap = SocketTap(chat.page)
    # Makes the page's socket look closed from the moment a tool.call has been handed to the page
    # (the page runs the tool asynchronously, so its send comes after this), until `__deaf` ends.
    chat.page.add_init_script(
        """(() => {
            const Base = window.WebSocket;
            window.WebSocket = class extends Base {
                constructor(...args) {
                    super(...args);
                    let real = this.readyState;
                    Object.defineProperty(this, "readyState", {
                        configurable: true,
                        get: () => (window.__deaf ? 3 : real),
                        set: (value) => { real = value; },
                    });
                    this.addEventListener("message", (event) => {
                        try { if (JSON.parse(event.data).type === "tool.call") window.__deaf = true; } catch {}
                    });
                }
            };
        })();"""
    )
    chat.login()
    session_id = chat.new_chat()
    _talk_to(chat, "assistant", "Assistant")
    chat.send("/tool client_time {}")
    card = chat.page.locator(".pending--tool_call").last
    expect(card.locator(".pending__status")).to_have_text("Not connected; the result will be sent after reconnecting.")
    assert tap.frames("tool_result") == []
    call_id = card.get_attribute("data-pending-id")

    chat.page.evaluate("() => { window.__deaf = false; }")
    connections = len(tap.routes)
    tap.cut()
    expect(card).to_have_attribute("data-state", "answered")
    _wait_for(lambda: len(tap.frames("tool_result")) == 1, chat.page)
    assert tap.sent_on[tap.sent.index(tap.frames("tool_result")[0])] >= connections, "sent on the new connection"
    _wait_for(lambda: ToolCall.objects.get(pk=call_id).status == "done", chat.page)
    _wait_reply_after(chat, session_id, ToolCall.objects.select_related("message").get(pk=call_id).message.seq)


def test_cards_speak_the_contract(chat_page) -> None:  # type: ignore[no-untyped-def]
    """The page's side of tool calls, approvals and plans, with the frames injected into a live socket."""
    import uuid

    expect = _expect()
    chat: ChatPage = chat_page()
    tap = SocketTap(chat.page, hold=("hitl_decision", "plan_decision", "tool_result"))
    chat.login()
    chat.new_chat()
    chat.send("hello")
    chat.wait_status(chat.last_reply(), "complete")
    reply_id = chat.last_reply().get_attribute("data-id")

    approval_id, plan_id, call_id, bad_call_id = (str(uuid.uuid4()) for _ in range(4))
    tap.inject({"type": "approval.requested", "approval_id": approval_id, "message_id": reply_id,
                "tool": "webhook_post", "arguments": {"url": "http://127.0.0.1:9/hook", "payload": {"a": 1}}})
    card = chat.page.locator(f'.pending[data-pending-id="{approval_id}"]')
    expect(card).to_contain_text("webhook_post")
    expect(card.locator(".card__args")).to_contain_text('"a": 1')
    card.get_by_role("button", name="Approve webhook_post").click()
    expect(card).to_have_attribute("data-state", "approved")
    _wait_for(lambda: len(tap.frames("hitl_decision")) == 1, chat.page)
    assert tap.frames("hitl_decision")[-1] | {"request_id": None} == {
        "type": "hitl_decision", "approval_id": approval_id, "decision": "approve", "request_id": None,
    }

    tap.inject({"type": "plan.proposed", "plan_id": plan_id, "message_id": reply_id,
                "steps": [{"agent": "researcher", "instruction": "research the topic"},
                          {"agent": "coder", "instruction": "write a summary"}]})
    plan = chat.page.locator(f'.pending[data-pending-id="{plan_id}"]')
    expect(plan.locator(".plan-steps li")).to_have_count(2)
    expect(plan.locator(".plan-steps li").nth(0)).to_contain_text("Researcher")
    expect(plan.locator(".plan-steps li").nth(1)).to_contain_text("write a summary")
    plan.get_by_role("button", name="Reject the plan").click()
    expect(plan).to_have_attribute("data-state", "rejected")
    _wait_for(lambda: len(tap.frames("plan_decision")) == 1, chat.page)
    assert tap.frames("plan_decision")[-1]["plan_id"] == plan_id
    assert tap.frames("plan_decision")[-1]["decision"] == "reject"

    tap.inject({"type": "tool.call", "tool_call_id": call_id, "message_id": reply_id, "name": "client_time", "arguments": {}})
    tap.inject({"type": "tool.call", "tool_call_id": bad_call_id, "message_id": reply_id, "name": "rm_rf", "arguments": {}})
    _wait_for(lambda: len(tap.frames("tool_result")) == 2, chat.page)
    results = {f["tool_call_id"]: f for f in tap.frames("tool_result")}
    good = results[call_id]
    assert good["is_error"] is False
    assert set(good["output"]) == {"iso", "timezone", "locale"}
    assert good["output"]["timezone"] and good["output"]["locale"]
    from datetime import datetime

    assert datetime.fromisoformat(good["output"]["iso"]).utcoffset() is not None
    assert results[bad_call_id]["is_error"] is True
    expect(chat.page.locator(f'.pending[data-pending-id="{call_id}"]')).to_have_attribute("data-state", "answered")

    # A decision the server says was already made (in another tab) closes the card quietly ...
    twice = str(uuid.uuid4())
    tap.inject({"type": "approval.requested", "approval_id": twice, "message_id": reply_id,
                "tool": "webhook_post", "arguments": {"b": 2}})
    card = chat.page.locator(f'.pending[data-pending-id="{twice}"]')
    card.get_by_role("button", name="Approve webhook_post").click()
    _wait_for(lambda: any(f["approval_id"] == twice for f in tap.frames("hitl_decision")), chat.page)
    request_id = next(f["request_id"] for f in tap.frames("hitl_decision") if f["approval_id"] == twice)
    tap.inject({"type": "error", "code": "already_decided", "detail": "This approval was already decided (approved).",
                "request_id": request_id})
    expect(card).to_have_attribute("data-state", "closed")
    expect(card.locator(".pending__status")).to_have_text("Already decided elsewhere.")
    expect(card.get_by_role("button", name="Approve webhook_post")).to_be_disabled()
    # ... and so does a tool result the server had already: nothing to tell the user.
    tap.inject({"type": "error", "code": "already_decided", "detail": "This tool call is not waiting for a result.",
                "request_id": f"tool:{call_id}"})

    # Open items listed in session.ready.pending (as after a reload) get their cards.
    later = str(uuid.uuid4())
    tap.inject({"type": "session.ready", "session": None, "last_seq": 2, "active": [], "pending": [
        {"kind": "approval", "approval_id": later, "message_id": reply_id, "tool": "webhook_post", "arguments": {"x": 2}},
    ]})
    expect(chat.page.locator(f'.pending[data-pending-id="{later}"] button', has_text="Approve")).to_be_enabled()
    # (Frames are applied in order: the already_decided errors before it were taken quietly.)
    expect(chat.page.locator("#notice")).to_be_hidden()
    # ... and an open card not listed any more was decided elsewhere.
    expect(chat.page.locator(f'.pending[data-pending-id="{approval_id}"]')).to_have_attribute("data-state", "approved")
