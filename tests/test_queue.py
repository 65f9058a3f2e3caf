"""Typing while a reply runs: reject (busy), enqueue (answered after the turn, in order), interrupt (the turn stops first)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat.models import Message, Plan, QueuedMessage
from sessions_app.models import ChatSession
from sessions_app.services import session_create
from tests.api import MESSAGES, SESSIONS, messages_url
from tests.ws import db, frames_until, next_frame, open_socket, send

pytestmark = pytest.mark.django_db(transaction=True)


def rest(client: Any, method: str, url: str, body: Any = None) -> Any:
    return database_sync_to_async(lambda: getattr(client, method)(url, body, format="json") if body is not None else getattr(client, method)(url))()


async def start_slow(comm: Any, pieces: int = 60) -> str:
    """Start a reply that streams for a while; its id once its first delta arrived."""
    await send(comm, {"type": "user_message", "content": f"/slow {pieces}"})
    return (await frames_until(comm, "message.delta"))[-1]["message_id"]


async def wait_idle(session_id: Any, timeout: float = 30) -> list[Message]:
    """The session's messages once nothing streams and nothing is queued."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        session = await db(ChatSession.objects.get, pk=session_id)
        streaming = await db(Message.objects.filter(session_id=session_id, status="streaming").exists)
        if not streaming and session.queued == 0:
            return await db(lambda: list(Message.objects.filter(session_id=session_id).order_by("seq")))
        await asyncio.sleep(0.05)
    raise AssertionError("the session did not settle")


async def test_messages_sent_with_enqueue_are_answered_after_the_running_reply_in_order(user, token, api):  # type: ignore[no-untyped-def]
    session = await db(session_create, owner=user)
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    running = await start_slow(comm)
    sent = []
    for word in ("one", "two", "three"):
        client_id = str(uuid.uuid4())
        sent.append(client_id)
        await send(comm, {"type": "user_message", "content": f"queued {word}", "client_id": client_id, "on_busy": "enqueue"})
        queue = (await frames_until(comm, "queue.updated", where=lambda f, c=client_id: any(q["client_id"] == c for q in f["queue"])))[-1]["queue"]
    assert [q["content"] for q in queue] == ["queued one", "queued two", "queued three"]
    assert all(q["reply"] and not q["interrupt"] and q["session"] == str(session.pk) for q in queue)
    listed = await rest(api, "get", f"{SESSIONS}{session.pk}/queue/")
    assert listed.status_code == 200 and [q["id"] for q in listed.json()] == [q["id"] for q in queue]
    # A repeat of a queued message's client_id queues nothing: the sender gets the queue again.
    await send(comm, {"type": "user_message", "content": "queued one", "client_id": sent[0], "on_busy": "enqueue"})
    assert len((await frames_until(comm, "queue.updated"))[-1]["queue"]) == 3
    # Over REST, the same choice: 202 with the queued message.
    response = await rest(api, "post", MESSAGES, {"session": str(session.pk), "content": "queued four", "on_busy": "enqueue"})
    assert response.status_code == 202, response.content
    assert response.json()["queued"]["content"] == "queued four"

    messages = await wait_idle(session.pk)
    first = next(m for m in messages if m.pk == uuid.UUID(running))
    assert first.status == "complete" and first.content == "".join(f"chunk {i} " for i in range(1, 61))
    users = [m for m in messages if m.role == "user"]
    assert [m.content for m in users] == ["/slow 60", "queued one", "queued two", "queued three", "queued four"]
    assert [m.client_id for m in users[1:4]] == sent
    replies = {m.reply_to_id: m for m in messages if m.role == "assistant"}
    assert all(replies[u.pk].status == "complete" and f'"{u.content}"' in replies[u.pk].content for u in users[1:])
    assert [m.seq for m in messages] == list(range(1, 11))
    # Each answered message follows the reply before it on the branch.
    assert all(m.parent_id == p.pk for p, m in itertools.pairwise(messages))
    assert await db(QueuedMessage.objects.filter(session=session).exists) is False
    await comm.disconnect()


async def test_interrupt_stops_the_running_reply_keeps_its_text_and_answers_the_new_message_next(user, token, api):  # type: ignore[no-untyped-def]
    session = await db(session_create, owner=user)
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    running = await start_slow(comm, 400)
    await send(comm, {"type": "user_message", "content": "later", "on_busy": "enqueue"})
    await frames_until(comm, "queue.updated")
    await send(comm, {"type": "user_message", "content": "now please", "on_busy": "interrupt"})
    frames = await frames_until(comm, "message.completed", where=lambda f: f["message"]["id"] == running)
    queued = [f for f in frames if f["type"] == "queue.updated"]
    assert [q["content"] for q in queued[-1]["queue"]] == ["now please", "later"] and queued[-1]["queue"][0]["interrupt"]
    stopped = frames[-1]["message"]
    assert stopped["status"] == "cancelled" and stopped["content"].startswith("chunk 1 ")
    assert (await db(Message.objects.get, pk=running)).content == stopped["content"]

    messages = await wait_idle(session.pk)
    assert [(m.role, m.content[:10]) for m in messages if m.role == "user"] == [("user", "/slow 400"), ("user", "now please"), ("user", "later")]
    assert [m.status for m in messages if m.role == "assistant"] == ["cancelled", "complete", "complete"]
    await comm.disconnect()


async def test_the_session_chooses_what_a_message_does_while_a_turn_runs(user, token, api):  # type: ignore[no-untyped-def]
    session = await db(session_create, owner=user)
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    running = await start_slow(comm)
    # reject, the default: busy, nothing saved.
    await send(comm, {"type": "user_message", "content": "refused", "request_id": "r"})
    error = (await frames_until(comm, "error"))[-1]
    assert (error["code"], error["request_id"]) == ("busy", "r")
    response = await rest(api, "post", MESSAGES, {"session": str(session.pk), "content": "refused too"})
    assert (response.status_code, response.json()["code"]) == (409, "busy")

    response = await rest(api, "patch", f"{SESSIONS}{session.pk}/", {"on_busy": "enqueue"})
    assert response.status_code == 200 and response.json()["on_busy"] == "enqueue"
    assert (await rest(api, "patch", f"{SESSIONS}{session.pk}/", {"on_busy": "later"})).status_code == 400
    await send(comm, {"type": "user_message", "content": "taken in turn"})
    assert [q["content"] for q in (await frames_until(comm, "queue.updated"))[-1]["queue"]] == ["taken in turn"]
    # A single send may still choose otherwise.
    await send(comm, {"type": "user_message", "content": "refused again", "on_busy": "reject", "request_id": "again"})
    assert (await frames_until(comm, "error"))[-1]["code"] == "busy"

    messages = await wait_idle(session.pk)
    assert [m.content for m in messages if m.role == "user"] == ["/slow 60", "taken in turn"]
    assert (await db(Message.objects.get, pk=running)).status == "complete"
    await comm.disconnect()


async def test_a_queued_message_can_be_cancelled_and_is_never_answered(user, other_user, token, api, other_api):  # type: ignore[no-untyped-def]
    session = await db(session_create, owner=user, on_busy="enqueue")
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await start_slow(comm, 80)
    for text in ("keep me", "drop me", "drop me too"):
        await send(comm, {"type": "user_message", "content": text})
        queue = (await frames_until(comm, "queue.updated", where=lambda f, t=text: f["queue"][-1]["content"] == t))[-1]["queue"]
    await send(comm, {"type": "queue_cancel", "queued_id": queue[1]["id"]})
    assert [q["content"] for q in (await frames_until(comm, "queue.updated"))[-1]["queue"]] == ["keep me", "drop me too"]
    url = f"{SESSIONS}{session.pk}/queue/{queue[2]['id']}/"
    assert (await rest(other_api, "delete", url)).status_code == 404  # another user's: as missing
    assert (await rest(api, "delete", url)).status_code == 204
    assert (await rest(api, "delete", url)).status_code == 404  # gone already
    assert (await rest(api, "delete", f"{SESSIONS}{session.pk}/queue/nope/")).status_code == 404
    assert (await rest(other_api, "get", f"{SESSIONS}{session.pk}/queue/")).status_code == 404
    await send(comm, {"type": "queue_cancel", "queued_id": str(uuid.uuid4()), "request_id": "x"})
    assert (await frames_until(comm, "error"))[-1]["code"] == "not_found"

    messages = await wait_idle(session.pk)
    assert [m.content for m in messages if m.role == "user"] == ["/slow 80", "keep me"]
    await comm.disconnect()


async def test_a_queue_waits_for_an_approval_and_follows_the_turn_it_was_sent_in(user, token, settings):  # type: ignore[no-untyped-def]
    """What waits for a person holds the queue: the queued message is answered once the approval is decided and its turn ended."""
    settings.CHAT = {**settings.CHAT, "DEMO_DELTA_DELAY": 0.3}
    session = await db(session_create, owner=user, mode="direct", agent="researcher")
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": '/tool webhook_post {"url": "http://127.0.0.1:9/hook"}'})
    await frames_until(comm, "message.delta")
    await send(comm, {"type": "user_message", "content": "and then this", "on_busy": "enqueue"})
    await frames_until(comm, "queue.updated")
    approval = (await frames_until(comm, "approval.requested", timeout=30))[-1]
    await asyncio.sleep(0.5)
    assert await db(QueuedMessage.objects.filter(session=session).count) == 1, "held while the approval waits"
    assert not await db(Message.objects.filter(session=session, content="and then this").exists)

    await send(comm, {"type": "hitl_decision", "approval_id": approval["approval_id"], "decision": "reject"})
    answered = await frames_until(comm, "message.created", where=lambda f: f["message"]["content"] == "and then this", timeout=30)
    kinds = [(f["message"]["role"], f["message"]["type"]) for f in answered if f["type"] == "message.created"]
    # The rejected call's result and the reply that follows it come before the queued message.
    assert kinds[-3:] == [("tool", "tool_result"), ("assistant", "text"), ("user", "text")], kinds
    messages = await wait_idle(session.pk)
    assert all(m.status == "complete" for m in messages)
    assert messages[-1].role == "assistant" and messages[-1].reply_to_id == messages[-2].pk
    await comm.disconnect()


async def test_tens_of_sockets_queueing_into_one_session_are_each_answered_once_in_order(user, token, settings):  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "MAX_QUEUED_MESSAGES": 40}
    session = await db(session_create, owner=user, on_busy="enqueue")
    tabs = [await open_socket(session.pk, token=token) for _ in range(25)]
    for tab in tabs:
        await next_frame(tab)
    await start_slow(tabs[0], 30)
    ids = [str(uuid.uuid4()) for _ in tabs]
    await asyncio.gather(*(send(tab, {"type": "user_message", "content": f"tab {i}", "client_id": ids[i]}) for i, tab in enumerate(tabs)))
    messages = await wait_idle(session.pk, timeout=60)
    users = [m for m in messages if m.role == "user"][1:]
    assert sorted(m.client_id for m in users) == sorted(ids), "each queued message answered exactly once"
    assert all(m.status == "complete" for m in messages)
    replies = [m for m in messages if m.role == "assistant"][1:]
    assert [r.reply_to_id for r in replies] == [u.pk for u in users], "answered one after the other, in the order queued"
    queued_order = await db(lambda: [m.client_id for m in users])
    assert len(queued_order) == 25
    for tab in tabs:
        await tab.disconnect()


async def test_too_many_queued_messages_are_refused_and_change_nothing(user, token, api, settings):  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "MAX_QUEUED_MESSAGES": 2}
    session = await db(session_create, owner=user, on_busy="enqueue")
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await start_slow(comm, 80)
    for text in ("a", "b"):
        assert (await rest(api, "post", MESSAGES, {"session": str(session.pk), "content": text})).status_code == 202
    response = await rest(api, "post", MESSAGES, {"session": str(session.pk), "content": "c"})
    assert (response.status_code, response.json()["code"]) == (409, "busy")
    assert await db(QueuedMessage.objects.filter(session=session).count) == 2
    await send(comm, {"type": "cancel"})
    messages = await wait_idle(session.pk)
    assert [m.content for m in messages if m.role == "user"] == ["/slow 80", "a", "b"]
    page = (await rest(api, "get", messages_url(session.pk))).json()
    assert page["total_count"] == 6
    await comm.disconnect()


async def test_tens_of_sockets_sending_at_once_start_one_turn_and_the_rest_are_busy(user, token):  # type: ignore[no-untyped-def]
    """Reject, across the database's writer threads: each sees the others' turn, however the row locks queued them."""
    session = await db(session_create, owner=user)
    tabs = [await open_socket(session.pk, token=token) for _ in range(20)]
    for tab in tabs:
        await next_frame(tab)
    await asyncio.gather(*(send(tab, {"type": "user_message", "content": "/slow 100", "request_id": i}) for i, tab in enumerate(tabs)))

    async def outcome(tab: Any) -> str:
        frames = await frames_until(tab, "message.delta", timeout=30)
        return "busy" if any(f["type"] == "error" and f["code"] == "busy" for f in frames) else "started"

    outcomes = await asyncio.gather(*(outcome(tab) for tab in tabs))
    assert outcomes.count("started") == 1 and outcomes.count("busy") == 19, outcomes
    for tab in tabs:
        await tab.disconnect()
    assert await db(Message.objects.filter(session=session, role="user").count) == 1


async def test_a_queued_message_without_a_reply_does_not_hold_up_the_ones_behind_it(user, token, api, settings):  # type: ignore[no-untyped-def]
    # No heartbeat sweep during the test: only the turn's own ends move the queue on.
    settings.CHAT = {**settings.CHAT, "WORKER_HEARTBEAT": 3600}
    session = await db(session_create, owner=user, on_busy="enqueue")
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await start_slow(comm, 30)
    for body in ({"content": "first"}, {"content": "a note, no reply", "reply": False}, {"content": "then answer this"}):
        response = await rest(api, "post", MESSAGES, {"session": str(session.pk), **body})
        assert response.status_code == 202, response.content
    messages = await wait_idle(session.pk)
    assert [m.content for m in messages if m.role == "user"] == ["/slow 30", "first", "a note, no reply", "then answer this"]
    assert messages[-1].role == "assistant" and messages[-1].status == "complete" and messages[-1].reply_to_id == messages[-2].pk
    await comm.disconnect()


async def approve_plan(comm: Any, steps: str) -> None:
    await send(comm, {"type": "user_message", "content": f"/plan {steps}"})
    proposed = (await frames_until(comm, "plan.proposed", timeout=30))[-1]
    await send(comm, {"type": "plan_decision", "plan_id": proposed["plan_id"], "decision": "approve"})
    # The first step's reply streams.
    await frames_until(comm, "message.delta", where=lambda f: True, timeout=30)


async def test_a_message_queued_while_a_plan_runs_is_answered_after_its_last_step(user, token, settings):  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "DEMO_DELTA_DELAY": 0.05}
    session = await db(session_create, owner=user)
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await approve_plan(comm, "first step; second step")
    await send(comm, {"type": "user_message", "content": "after the plan", "on_busy": "enqueue"})
    await frames_until(comm, "queue.updated")
    messages = await wait_idle(session.pk, timeout=60)
    texts = [(m.role, m.type, m.content) for m in messages]
    queued_at = texts.index(("user", "text", "after the plan"))
    steps = [i for i, (role, kind, content) in enumerate(texts) if role == "assistant" and content.startswith("Step ")]
    assert len(steps) == 2 and max(steps) < queued_at, texts
    assert messages[-1].role == "assistant" and messages[-1].status == "complete"
    plan = await db(Plan.objects.get, session=session)
    assert plan.status == "done"
    await comm.disconnect()


async def test_interrupt_while_a_plan_runs_stops_its_step_and_the_plan(user, token, settings):  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "DEMO_DELTA_DELAY": 0.2}
    session = await db(session_create, owner=user)
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await approve_plan(comm, "a long first step with many words to stream; a second step that never runs")
    await send(comm, {"type": "user_message", "content": "stop and do this", "on_busy": "interrupt"})
    messages = await wait_idle(session.pk, timeout=60)
    plan = await db(Plan.objects.get, session=session)
    assert plan.status == "superseded"
    steps = [m for m in messages if m.role == "assistant" and m.type == "text" and (m.metadata.get("context") or {}).get("plan_id")]
    assert [s.status for s in steps] == ["cancelled"], [(s.status, s.content) for s in steps]
    assert messages[-2].content == "stop and do this" and messages[-1].status == "complete"
    await comm.disconnect()
