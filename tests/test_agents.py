"""Agents, tools, human approval and plans, end to end over the socket."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db.models import F

from chat.engine.process import engine
from chat.models import Approval, Message, Plan, ToolCall
from sessions_app.models import ChatSession
from sessions_app.services import session_create
from tests.ws import db, frames_until, next_frame, open_socket, send, token_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def session(user):  # type: ignore[no-untyped-def]
    return session_create(owner=user, title="Agents")


def created(frames: list[dict], kind: str) -> list[dict]:
    return [f["message"] for f in frames if f["type"] == "message.created" and f["message"]["type"] == kind]


async def turn_until_answer(comm: Any, content: str) -> list[dict]:
    """Send and collect frames until a continuation reply (after tools) completes."""
    await send(comm, {"type": "user_message", "content": content})
    frames = await frames_until(comm, "message.completed")  # the reply that asked for the tool
    frames += await frames_until(comm, "message.completed", where=lambda f: f["message"]["type"] == "text")
    return frames


async def test_server_tool_runs_and_reply_uses_its_output(session, token):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    frames = await turn_until_answer(comm, '/tool calculator {"expression": "2*(3+4)"}')
    results = created(frames, "tool_result")
    assert len(results) == 1 and json.loads(results[0]["content"])["result"] == 14
    assert results[0]["role"] == "tool" and results[0]["metadata"]["is_error"] is False
    answer = frames[-1]["message"]
    assert answer["status"] == "complete" and '"result": 14' in answer["content"]
    user_id = created(frames, "text")[0]["id"]
    assert answer["reply_to"] == user_id
    call = await db(lambda: ToolCall.objects.get(session=session))
    assert (call.name, call.status, call.output["result"]) == ("calculator", "done", 14)
    seqs = await db(lambda: list(Message.objects.filter(session=session).order_by("seq").values_list("seq", "type")))
    assert [s for s, _ in seqs] == list(range(1, len(seqs) + 1))
    assert [t for _, t in seqs] == ["text", "text", "tool_call", "tool_result", "text"]
    await comm.disconnect()


async def test_client_tool_call_gets_result_and_reply_continues(session, token):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/tool client_time {}"})
    frames = await frames_until(comm, "tool.call")
    call = frames[-1]
    assert call["name"] == "client_time" and call["arguments"] == {} and call["message_id"]
    await send(comm, {"type": "tool_result", "tool_call_id": call["tool_call_id"], "output": {"iso": "2026-01-01T10:00:00+01:00"}})
    rest = await frames_until(comm, "message.completed", where=lambda f: f["message"]["type"] == "text")
    assert "2026-01-01T10:00:00+01:00" in rest[-1]["message"]["content"]
    stored = await db(lambda: ToolCall.objects.get(pk=call["tool_call_id"]))
    assert stored.status == "done" and stored.output == {"iso": "2026-01-01T10:00:00+01:00"}
    # A second result for the same call is refused and changes nothing.
    await send(comm, {"type": "tool_result", "tool_call_id": call["tool_call_id"], "output": "again"})
    error = (await frames_until(comm, "error"))[-1]
    assert error["code"] == "already_decided"
    assert (await db(lambda: ToolCall.objects.get(pk=call["tool_call_id"]))).output == {"iso": "2026-01-01T10:00:00+01:00"}
    await comm.disconnect()


async def test_approved_call_runs_once(session, token, webhook):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": f'/tool webhook_post {{"url": "{webhook.url}", "payload": {{"n": 1}}}}'})
    request = (await frames_until(comm, "approval.requested"))[-1]
    assert request["tool"] == "webhook_post" and request["arguments"]["payload"] == {"n": 1}
    assert webhook.bodies == []  # nothing runs before a person says yes
    await send(comm, {"type": "hitl_decision", "approval_id": request["approval_id"], "decision": "approve"})
    rest = await frames_until(comm, "message.completed", where=lambda f: f["message"]["type"] == "text")
    assert webhook.bodies == [{"n": 1}]
    assert '"status": 200' in rest[-1]["message"]["content"]
    await send(comm, {"type": "hitl_decision", "approval_id": request["approval_id"], "decision": "approve", "request_id": 7})
    error = (await frames_until(comm, "error"))[-1]
    assert (error["code"], error["request_id"]) == ("already_decided", 7)
    assert webhook.bodies == [{"n": 1}]
    approval = await db(lambda: Approval.objects.get(pk=request["approval_id"]))
    assert approval.status == "approved" and approval.decided_at is not None
    await comm.disconnect()


async def test_rejected_call_never_runs(session, token, webhook):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": f'/tool webhook_post {{"url": "{webhook.url}"}}'})
    request = (await frames_until(comm, "approval.requested"))[-1]
    await send(comm, {"type": "hitl_decision", "approval_id": request["approval_id"], "decision": "reject", "comment": "not now"})
    rest = await frames_until(comm, "message.completed", where=lambda f: f["message"]["type"] == "text")
    assert "rejected" in rest[-1]["message"]["content"]
    assert webhook.bodies == []
    call = await db(lambda: ToolCall.objects.get(session=session))
    assert call.status == "rejected" and call.is_error
    await comm.disconnect()


async def test_approval_answered_after_reconnect(session, token, webhook):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": f'/tool webhook_post {{"url": "{webhook.url}", "payload": {{"k": "v"}}}}'})
    request = (await frames_until(comm, "approval.requested"))[-1]
    await comm.disconnect()

    later = await open_socket(session.pk, token=token)
    ready = await next_frame(later)
    assert [(p["kind"], p["approval_id"], p["tool"]) for p in ready["pending"]] == [("approval", request["approval_id"], "webhook_post")]
    await send(later, {"type": "hitl_decision", "approval_id": request["approval_id"], "decision": "approve"})
    await frames_until(later, "message.completed", where=lambda f: f["message"]["type"] == "text")
    assert webhook.bodies == [{"k": "v"}]
    again = await open_socket(session.pk, token=token)
    assert (await next_frame(again))["pending"] == []
    await later.disconnect()
    await again.disconnect()


async def test_pending_client_tool_call_is_listed_after_reload(session, token):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/tool client_time {}"})
    call = (await frames_until(comm, "tool.call"))[-1]
    await comm.disconnect()
    later = await open_socket(session.pk, token=token)
    pending = (await next_frame(later))["pending"]
    assert [(p["kind"], p["tool_call_id"], p["name"]) for p in pending] == [("tool_call", call["tool_call_id"], "client_time")]
    await later.disconnect()


async def test_plan_approved_runs_every_step_in_order(session, token):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/plan research the topic and compare sources; write python code for it"})
    frames = await frames_until(comm, "plan.proposed")
    plan = frames[-1]
    assert [s["instruction"] for s in plan["steps"]] == ["research the topic and compare sources", "write python code for it"]
    assert [s["agent"] for s in plan["steps"]] == ["researcher", "coder"]
    orchestrator_reply = next(f["message"] for f in frames if f["type"] == "message.created" and f["message"]["role"] == "assistant")
    assert orchestrator_reply["agent"] == "orchestrator"
    await send(comm, {"type": "plan_decision", "plan_id": plan["plan_id"], "decision": "approve"})
    first = await frames_until(comm, "message.completed", where=lambda f: f["message"]["content"].startswith("Step 1"))
    second = await frames_until(comm, "message.completed", where=lambda f: f["message"]["content"].startswith("Step 2"))
    assert first[-1]["message"]["agent"] == "researcher" and "research the topic" in first[-1]["message"]["content"]
    assert second[-1]["message"]["agent"] == "coder" and second[-1]["message"]["seq"] > first[-1]["message"]["seq"]
    stored = await db(lambda: Plan.objects.get(pk=plan["plan_id"]))
    for _ in range(50):
        if stored.status == "done":
            break
        await database_sync_to_async(stored.refresh_from_db)()
    assert stored.status == "done" and stored.current_step == 2
    await comm.disconnect()


async def test_plan_rejected_gets_short_reply_and_runs_nothing(session, token):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/plan step one; step two"})
    plan = (await frames_until(comm, "plan.proposed"))[-1]
    await send(comm, {"type": "plan_decision", "plan_id": plan["plan_id"], "decision": "reject"})
    frames = await frames_until(comm, "message.created", where=lambda f: f["message"]["type"] == "text")
    assert "will not" in frames[-1]["message"]["content"]
    stored = await db(lambda: Plan.objects.get(pk=plan["plan_id"]))
    assert stored.status == "rejected"
    assert not await db(lambda: Message.objects.filter(session=session, content__startswith="Step ").exists())
    await comm.disconnect()


async def test_switch_agent_in_direct_mode(user, token):  # type: ignore[no-untyped-def]
    session = await db(session_create, owner=user, mode="direct", agent="assistant")
    tab1 = await open_socket(session.pk, token=token)
    tab2 = await open_socket(session.pk, token=token)
    await next_frame(tab1)
    await next_frame(tab2)
    await send(tab1, {"type": "switch_agent", "agent": "coder"})
    switched = (await frames_until(tab2, "agent.switched"))[-1]
    assert switched["session"]["agent"] == "coder"
    assert (await db(lambda: ChatSession.objects.select_related("agent").get(pk=session.pk))).agent.slug == "coder"
    await send(tab1, {"type": "user_message", "content": "tell me about research"})
    frames = await frames_until(tab1, "message.completed")
    assert frames[-1]["message"]["agent"] == "coder"  # direct mode: no routing
    await send(tab1, {"type": "switch_agent", "agent": "nobody"})
    assert (await frames_until(tab1, "error"))[-1]["code"] == "agent_not_found"
    # Switching to the agent already answering is confirmed too.
    await send(tab1, {"type": "switch_agent", "agent": "coder"})
    assert (await frames_until(tab1, "agent.switched"))[-1]["session"]["agent"] == "coder"
    await tab1.disconnect()
    await tab2.disconnect()


async def test_orchestrated_mode_routes_to_the_best_agent(session, token):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "Please fix the bug in this Python function"})
    assert (await frames_until(comm, "message.completed"))[-1]["message"]["agent"] == "coder"
    await send(comm, {"type": "user_message", "content": "Summarise and compare these two reports"})
    assert (await frames_until(comm, "message.completed"))[-1]["message"]["agent"] == "researcher"
    await comm.disconnect()


@pytest.mark.parametrize(
    "command",
    [
        '/tool calculator {"expr": "1+1"}',
        '/tool calculator {"expression": 5}',
        "/tool calculator {not json",
        '/tool calculator {"expression": "__import__(\'os\')"}',
        '/tool webhook_post {"url": 3}',
        "/tool no_such_tool {}",
    ],
)
async def test_invalid_arguments_are_rejected_before_the_tool_runs(session, token, webhook, command):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    frames = await turn_until_answer(comm, command)
    result = created(frames, "tool_result")[0]
    assert result["metadata"]["is_error"] is True
    assert "approval.requested" not in [f["type"] for f in frames]
    assert webhook.bodies == []
    assert frames[-1]["message"]["status"] == "complete" and "failed" in frames[-1]["message"]["content"]
    assert not await db(lambda: Approval.objects.filter(session=session).exists())
    await comm.disconnect()


async def test_decisions_on_unknown_foreign_or_decided_ids_are_refused(session, token, other_user, webhook):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": f'/tool webhook_post {{"url": "{webhook.url}"}}'})
    request = (await frames_until(comm, "approval.requested"))[-1]

    # Bob, in his own session, cannot decide Alice's approval: it is "not found" for him.
    bob_session = await db(session_create, owner=other_user)
    bob = await open_socket(bob_session.pk, token=await db(token_for, other_user))
    await next_frame(bob)
    await send(bob, {"type": "hitl_decision", "approval_id": request["approval_id"], "decision": "approve"})
    assert (await next_frame(bob))["code"] == "not_found"
    await send(bob, {"type": "plan_decision", "plan_id": str(uuid.uuid4()), "decision": "approve"})
    assert (await next_frame(bob))["code"] == "not_found"
    await send(bob, {"type": "tool_result", "tool_call_id": str(uuid.uuid4()), "output": 1})
    assert (await next_frame(bob))["code"] == "not_found"
    await bob.disconnect()
    assert (await db(lambda: Approval.objects.get(pk=request["approval_id"]))).status == "pending"
    assert webhook.bodies == []

    await send(comm, {"type": "hitl_decision", "approval_id": request["approval_id"], "decision": "reject"})
    await frames_until(comm, "message.completed", where=lambda f: f["message"]["type"] == "text")
    await send(comm, {"type": "hitl_decision", "approval_id": request["approval_id"], "decision": "approve"})
    assert (await frames_until(comm, "error"))[-1]["code"] == "already_decided"
    assert (await db(lambda: Approval.objects.get(pk=request["approval_id"]))).status == "rejected"
    assert webhook.bodies == []
    await comm.disconnect()


async def _wait_received(webhook: Any) -> None:
    for _ in range(200):
        if webhook.received.is_set():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the webhook got nothing")


async def test_a_new_message_while_a_tool_runs_is_busy_and_saves_nothing(session, token, webhook):  # type: ignore[no-untyped-def]
    webhook.gate = threading.Event()
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": f'/tool webhook_post {{"url": "{webhook.url}"}}'})
    request = (await frames_until(comm, "approval.requested"))[-1]
    await send(comm, {"type": "hitl_decision", "approval_id": request["approval_id"], "decision": "approve"})
    await _wait_received(webhook)  # the tool runs now; no reply streams
    count = await db(lambda: Message.objects.filter(session=session).count())
    await send(comm, {"type": "user_message", "content": "are you done?", "request_id": "r1"})
    error = (await frames_until(comm, "error"))[-1]
    assert (error["code"], error["request_id"]) == ("busy", "r1")
    assert await db(lambda: Message.objects.filter(session=session).count()) == count
    webhook.gate.set()
    answer = (await frames_until(comm, "message.completed", where=lambda f: f["message"]["type"] == "text"))[-1]["message"]
    assert '"status": 200' in answer["content"]
    await send(comm, {"type": "user_message", "content": "thanks"})
    assert (await frames_until(comm, "message.completed"))[-1]["message"]["status"] == "complete"
    await comm.disconnect()


async def test_a_new_message_instead_of_a_decision_supersedes_the_approval(session, token, webhook):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": f'/tool webhook_post {{"url": "{webhook.url}"}}'})
    request = (await frames_until(comm, "approval.requested"))[-1]
    await send(comm, {"type": "user_message", "content": "never mind, just say hello"})
    frames = await frames_until(comm, "message.completed", where=lambda f: f["message"]["type"] == "text")
    closed = [f["message"] for f in frames if f["type"] == "message.completed" and f["message"]["type"] == "approval"]
    assert closed and closed[-1]["metadata"]["status"] == "superseded"
    result = created(frames, "tool_result")[-1]
    assert result["metadata"]["is_error"] is True and "new message" in result["content"]
    answer = frames[-1]["message"]
    assert "never mind" in answer["content"]
    # A late decision changes nothing: the call never runs, and no continuation of the old turn follows.
    await send(comm, {"type": "hitl_decision", "approval_id": request["approval_id"], "decision": "approve"})
    assert (await frames_until(comm, "error"))[-1]["code"] == "already_decided"
    await send(comm, {"type": "resync"})
    assert (await frames_until(comm, "session.ready"))[-1]["pending"] == []
    assert webhook.bodies == []
    call = await db(lambda: ToolCall.objects.get(session=session))
    assert call.status == "superseded"
    assert (await db(lambda: Approval.objects.get(pk=request["approval_id"]))).status == "superseded"
    texts = await db(lambda: list(Message.objects.filter(session=session, role="assistant", type="text").values_list("content", flat=True)))
    assert len(texts) == 2 and not any(t.startswith("Here is what the tools said") for t in texts)
    await comm.disconnect()


async def test_a_new_message_instead_of_a_plan_decision_supersedes_the_plan(session, token):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/plan step one; step two"})
    plan = (await frames_until(comm, "plan.proposed"))[-1]
    await send(comm, {"type": "user_message", "content": "no plan, thanks"})
    await frames_until(comm, "message.completed", where=lambda f: f["message"]["type"] == "text" and "no plan" in f["message"]["content"])
    await send(comm, {"type": "plan_decision", "plan_id": plan["plan_id"], "decision": "approve"})
    assert (await frames_until(comm, "error"))[-1]["code"] == "already_decided"
    assert (await db(lambda: Plan.objects.get(pk=plan["plan_id"]))).status == "superseded"
    assert not await db(lambda: Message.objects.filter(session=session, content__startswith="Step ").exists())
    await comm.disconnect()


async def test_an_approval_decided_long_after_the_call_runs_once_and_keeps_its_result(session, token, webhook):  # type: ignore[no-untyped-def]
    """The call was made 20 minutes before the approval: the sweep must not take its run for lost."""
    from django.utils import timezone

    webhook.gate = threading.Event()
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": f'/tool webhook_post {{"url": "{webhook.url}", "payload": {{"late": true}}}}'})
    request = (await frames_until(comm, "approval.requested"))[-1]
    await db(lambda: ToolCall.objects.filter(session=session).update(created_at=timezone.now() - timezone.timedelta(minutes=20)))
    await send(comm, {"type": "hitl_decision", "approval_id": request["approval_id"], "decision": "approve"})
    await _wait_received(webhook)
    await engine.sweep()  # a heartbeat's sweep while the tool runs
    webhook.gate.set()
    answer = (await frames_until(comm, "message.completed", where=lambda f: f["message"]["type"] == "text"))[-1]["message"]
    assert '"status": 200' in answer["content"]
    call = await db(lambda: ToolCall.objects.get(session=session))
    assert call.status == "done" and call.output["status"] == 200
    assert webhook.bodies == [{"late": True}]
    await comm.disconnect()


async def test_a_running_plan_whose_process_died_is_taken_over(session, token):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/plan research the topic; write python code for it"})
    plan = (await frames_until(comm, "plan.proposed"))[-1]  # the turn's last frame
    # As a process leaves it that approved the plan and died before its first step.
    await db(lambda: Plan.objects.filter(pk=plan["plan_id"]).update(status="running", worker_id="gone-host-1-deadbeef"))
    await engine.sweep()
    await frames_until(comm, "message.completed", where=lambda f: f["message"]["content"].startswith("Step 2"))
    stored = await db(lambda: Plan.objects.get(pk=plan["plan_id"]))
    for _ in range(50):
        if stored.status == "done":
            break
        await asyncio.sleep(0.02)
        await database_sync_to_async(stored.refresh_from_db)()
    assert (stored.status, stored.current_step) == ("done", 2)
    steps = await db(lambda: list(Message.objects.filter(session=session, content__startswith="Step ").order_by("seq").values_list("content", flat=True)))
    assert [s.split(" (")[0] for s in steps] == ["Step 1 of 2", "Step 2 of 2"]
    await comm.disconnect()


async def test_a_plan_whose_step_died_with_its_process_ends_failed(session, token):  # type: ignore[no-untyped-def]
    from django.utils import timezone

    from chat.turn.replies import replies_mark_interrupted

    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/plan step one; step two"})
    plan = (await frames_until(comm, "plan.proposed"))[-1]  # the turn's last frame

    def as_a_dead_process_leaves_it() -> Message:
        """Plan running, its first step's reply half-written by a process that is gone."""
        from chat.models import Worker

        Worker.objects.create(pk="gone-host-2-deadbeef", hostname="elsewhere", pid=1, heartbeat_at=timezone.now() - timezone.timedelta(hours=1))
        locked = ChatSession.objects.get(pk=session.pk)
        step = Message.objects.create(
            session=locked, seq=locked.seq + 1, role="assistant", content="Step 1 of 2: half", status="streaming",
            worker_id="gone-host-2-deadbeef", metadata={"context": {"plan_id": plan["plan_id"], "step": 1, "steps": 2, "instruction": "step one"}},
        )
        ChatSession.objects.filter(pk=session.pk).update(seq=locked.seq + 1, message_count=F("message_count") + 1)
        Plan.objects.filter(pk=plan["plan_id"]).update(status="running", worker_id="gone-host-2-deadbeef", current_step=1, step_message=step)
        return step

    step = await db(as_a_dead_process_leaves_it)
    # One heartbeat's sweep: the reply is marked interrupted, then the plan is taken over.
    await db(replies_mark_interrupted)
    await engine.sweep()  # starts the takeover; it runs in the background, as after a real heartbeat
    assert (await db(lambda: Message.objects.get(pk=step.pk))).status == "interrupted"
    for _ in range(100):
        stored = await db(lambda: Plan.objects.get(pk=plan["plan_id"]))
        if stored.status != "running":
            break
        await asyncio.sleep(0.02)
    assert stored.status == "failed"
    assert not await db(lambda: Message.objects.filter(session=session, content__startswith="Step 2").exists())
    await comm.disconnect()


async def test_a_running_plan_of_a_live_process_elsewhere_is_left_alone(session, token):  # type: ignore[no-untyped-def]
    from django.utils import timezone

    from chat.models import Worker

    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/plan step one; step two"})
    plan = (await frames_until(comm, "plan.proposed"))[-1]
    await db(lambda: Worker.objects.create(pk="live-host-3-cafe", hostname="elsewhere", pid=1, heartbeat_at=timezone.now()))
    await db(lambda: Plan.objects.filter(pk=plan["plan_id"]).update(status="running", worker_id="live-host-3-cafe"))
    await engine.sweep()
    await asyncio.sleep(0.2)
    stored = await db(lambda: Plan.objects.get(pk=plan["plan_id"]))
    assert (stored.status, stored.worker_id, stored.current_step) == ("running", "live-host-3-cafe", 0)
    assert not await db(lambda: Message.objects.filter(session=session, content__startswith="Step ").exists())
    await comm.disconnect()


def test_tools_endpoint_lists_every_tool(api):  # type: ignore[no-untyped-def]
    tools = {t["name"]: t for t in api.get("/api/v1/tools/").json()}
    assert {"calculator", "current_time", "search_messages", "client_time", "webhook_post", "propose_plan"} <= set(tools)
    assert tools["client_time"]["runs_on"] == "client"
    assert tools["webhook_post"]["needs_approval"] is True
    assert tools["calculator"]["parameters"]["required"] == ["expression"]
    for tool in tools.values():
        assert set(tool) == {"name", "description", "runs_on", "needs_approval", "parameters"}
