"""The OpenAI-compatible provider end to end: a socket, a direct-mode session, and a fake model server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chat.models import Agent, Message, ToolCall
from sessions_app.services import session_create
from tests.fake_openai import CALCULATOR_CALL_ID, TEXT, USAGE, FakeOpenAI
from tests.ws import db, frames_until, merge_text, next_frame, open_socket, send

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(autouse=True)
def _quick_limits(settings):  # type: ignore[no-untyped-def]
    settings.CHAT = {
        **settings.CHAT,
        "OPENAI_API_KEY": "",
        "OPENAI_TIMEOUT": 5.0,
        "OPENAI_FIRST_TOKEN_TIMEOUT": 5.0,
        "OPENAI_MAX_RETRIES": 0,
    }


async def open_chat(user: Any, token: str, fake: FakeOpenAI, model: str) -> tuple[Any, Any]:
    """A direct-mode session with an OpenAI agent whose model name picks the fake's scenario, and a socket on it."""
    await db(
        Agent.objects.create,
        slug="gpt", name="GPT", provider=Agent.Provider.OPENAI, base_url=fake.url + "/v1", model=model,
        tools=["calculator", "current_time"],
    )
    session = await db(session_create, owner=user, mode="direct", agent="gpt")
    comm = await open_socket(session.pk, token=token)
    assert (await next_frame(comm))["type"] == "session.ready"
    return session, comm


def bodies(fake: FakeOpenAI, model: str) -> list[dict[str, Any]]:
    return [r["body"] for r in fake.requests if r["body"].get("model") == model]


def deltas(frames: list[dict[str, Any]], message_id: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "message.delta" and f["message_id"] == message_id]


async def test_openai_reply_streams_in_several_deltas_and_stores_usage(user, token, fake):  # type: ignore[no-untyped-def]
    _, comm = await open_chat(user, token, fake, "paced")
    await send(comm, {"type": "user_message", "content": "Say hello"})
    frames = await frames_until(comm, "message.completed")
    final = frames[-1]["message"]
    reply_id = final["id"]

    pieces = deltas(frames, reply_id)
    assert len(pieces) >= 3
    assert [p["offset"] for p in pieces] == [sum(len(p["delta"]) for p in pieces[:i]) for i in range(len(pieces))]
    assert merge_text("", frames, reply_id) == TEXT
    assert (final["status"], final["content"], final["error"], final["agent"]) == ("complete", TEXT, None, "gpt")
    assert final["metadata"]["usage"] == {**USAGE, "model": "paced", "finish_reason": "stop"}
    saved = await db(Message.objects.get, pk=reply_id)
    assert (saved.status, saved.content, saved.metadata["usage"]["total_tokens"]) == ("complete", TEXT, USAGE["total_tokens"])

    (body,) = bodies(fake, "paced")
    assert body["messages"] == [{"role": "user", "content": "Say hello"}]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert {t["function"]["name"] for t in body["tools"]} == {"calculator", "current_time"}
    await comm.disconnect()


async def test_openai_text_no_database_stores_is_cleaned_not_lost(user, token, fake):  # type: ignore[no-untyped-def]
    """A NUL character or a lone surrogate would make PostgreSQL refuse the whole reply."""
    _, comm = await open_chat(user, token, fake, "bad-characters")
    await send(comm, {"type": "user_message", "content": "Say something odd"})
    frames = await frames_until(comm, "message.completed")
    final = frames[-1]["message"]
    expected = "Null byte and a lone \ufffd surrogate."
    assert (final["status"], final["content"]) == ("complete", expected)
    assert merge_text("", frames, final["id"]) == expected
    saved = await db(Message.objects.get, pk=final["id"])
    assert (saved.status, saved.content) == ("complete", expected)
    await comm.disconnect()


async def test_openai_tool_arguments_no_database_stores_are_cleaned(user, token, fake):  # type: ignore[no-untyped-def]
    session, comm = await open_chat(user, token, fake, "bad-tool-characters")
    await send(comm, {"type": "user_message", "content": "Multiply"})
    final = (await frames_until(comm, "message.completed", where=lambda f: f["message"]["content"] == "Computed."))[-1]["message"]
    assert final["status"] == "complete"
    call = await db(lambda: ToolCall.objects.get(session=session))
    assert (call.arguments, call.status, call.output["result"]) == ({"expression": "2*3"}, "done", 6)
    await comm.disconnect()


async def test_openai_tool_call_runs_server_tool_and_follow_up_carries_result(user, token, fake):  # type: ignore[no-untyped-def]
    session, comm = await open_chat(user, token, fake, "calculator-round")
    await send(comm, {"type": "user_message", "content": "What is 2*(3+4)?"})
    frames = await frames_until(comm, "message.completed")  # the reply that asked for the tool
    asking = frames[-1]["message"]
    assert (asking["status"], asking["content"]) == ("complete", "Let me calculate.")
    frames += await frames_until(
        comm, "message.completed", where=lambda f: f["message"]["type"] == "text" and f["message"]["id"] != asking["id"]
    )
    answer = frames[-1]["message"]
    assert (answer["status"], answer["content"], answer["agent"]) == ("complete", "The calculator says 14.", "gpt")
    user_message = next(f["message"] for f in frames if f["type"] == "message.created" and f["message"]["role"] == "user")
    assert answer["reply_to"] == asking["reply_to"] == user_message["id"]

    results = [f["message"] for f in frames if f["type"] == "message.created" and f["message"]["type"] == "tool_result"]
    assert len(results) == 1 and json.loads(results[0]["content"])["result"] == 14
    assert results[0]["metadata"]["provider_call_id"] == CALCULATOR_CALL_ID and results[0]["metadata"]["is_error"] is False
    call = await db(ToolCall.objects.get, session=session)
    assert (call.name, call.status, call.provider_call_id, call.arguments) == (
        "calculator", "done", CALCULATOR_CALL_ID, {"expression": "2*(3+4)"}
    )

    first, second = bodies(fake, "calculator-round")
    assert first["messages"] == [{"role": "user", "content": "What is 2*(3+4)?"}]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool"]
    assistant, result = second["messages"][1:]
    assert assistant["content"] == "Let me calculate."  # the text and the call it came with are one message
    (announced,) = assistant["tool_calls"]
    assert (announced["id"], announced["type"], announced["function"]["name"]) == (CALCULATOR_CALL_ID, "function", "calculator")
    assert json.loads(announced["function"]["arguments"]) == {"expression": "2*(3+4)"}
    assert result["tool_call_id"] == CALCULATOR_CALL_ID and "14" in result["content"]
    assert {t["function"]["name"] for t in second["tools"]} == {"calculator", "current_time"}

    kinds = await db(lambda: list(Message.objects.filter(session=session).order_by("seq").values_list("seq", "type", "status")))
    assert [seq for seq, _, _ in kinds] == list(range(1, len(kinds) + 1))
    assert [(t, s) for _, t, s in kinds] == [
        ("text", "complete"), ("text", "complete"), ("tool_call", "complete"), ("tool_result", "complete"), ("text", "complete")
    ]
    await comm.disconnect()


async def test_openai_error_mid_stream_fails_reply_and_keeps_partial_text(user, token, fake):  # type: ignore[no-untyped-def]
    _, comm = await open_chat(user, token, fake, "mid-error")
    await send(comm, {"type": "user_message", "content": "Go"})
    frames = await frames_until(comm, "message.completed")
    final = frames[-1]["message"]
    assert (final["status"], final["content"]) == ("failed", "Partial answer")
    assert final["error"].startswith("The model server reported an error while answering.")
    assert "overloaded" in final["error"] and "Traceback" not in final["error"]
    assert merge_text("", frames, final["id"]) == "Partial answer"
    saved = await db(Message.objects.get, pk=final["id"])
    assert (saved.status, saved.content, saved.error) == ("failed", "Partial answer", final["error"])
    await comm.disconnect()


@pytest.mark.parametrize("model", ["hang", "hang-no-headers"])
async def test_openai_hang_fails_within_first_token_timeout(user, token, fake, settings, model):  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "OPENAI_FIRST_TOKEN_TIMEOUT": 1.0}
    _, comm = await open_chat(user, token, fake, model)
    started = time.monotonic()
    await send(comm, {"type": "user_message", "content": "Anyone there?"})
    frames = await frames_until(comm, "message.completed", timeout=10)
    elapsed = time.monotonic() - started
    final = frames[-1]["message"]
    assert (final["status"], final["content"]) == ("failed", "")
    assert final["error"] == "The model did not answer within 1 s."
    assert 0.9 <= elapsed < 3.0
    await comm.disconnect()


async def test_openai_cancel_ends_cancelled_and_closes_the_http_stream(user, token, fake):  # type: ignore[no-untyped-def]
    _, comm = await open_chat(user, token, fake, "slow")
    await send(comm, {"type": "user_message", "content": "Write a lot"})
    frames = await frames_until(comm, "message.delta", where=lambda f: f["offset"] > 20)
    reply_id = frames[-1]["message_id"]
    await send(comm, {"type": "cancel", "message_id": reply_id})
    frames += await frames_until(comm, "message.completed")
    final = frames[-1]["message"]
    assert final["status"] == "cancelled" and final["error"] is None
    assert final["content"].startswith("chunk 0 chunk 1 ") and "chunk 199" not in final["content"]
    saved = await db(Message.objects.get, pk=reply_id)
    assert (saved.status, saved.content) == ("cancelled", final["content"])

    # The model server sees the client go away: the HTTP stream was closed, not left to run to its end.
    for _ in range(60):
        if "slow" in fake.disconnects:
            break
        await asyncio.sleep(0.05)
    assert fake.disconnects == ["slow"]
    assert len(bodies(fake, "slow")) == 1
    await comm.disconnect()


async def test_openai_reply_over_the_length_limit_fails_and_closes_the_http_stream(user, token, fake, settings):  # type: ignore[no-untyped-def]
    """A model stuck in a loop: the reply ends `failed` with its text, and the model is told to stop."""
    settings.CHAT = {**settings.CHAT, "MAX_REPLY_CHARS": 40}
    _, comm = await open_chat(user, token, fake, "slow")
    await send(comm, {"type": "user_message", "content": "Write forever"})
    frames = await frames_until(comm, "message.completed")
    final = frames[-1]["message"]
    assert final["status"] == "failed" and "40 characters" in final["error"]
    assert final["content"].startswith("chunk 0 chunk 1 ") and len(final["content"]) <= 40
    for _ in range(60):
        if "slow" in fake.disconnects:
            break
        await asyncio.sleep(0.05)
    assert fake.disconnects == ["slow"]
    await comm.disconnect()


async def test_a_new_message_supersedes_every_call_of_a_reply_that_waits_for_approval(user, token, fake, settings):  # type: ignore[no-untyped-def]
    """The reply asked for two tools; the first waits for a person, the second is queued behind it."""
    await db(
        Agent.objects.create,
        slug="gpt", name="GPT", provider=Agent.Provider.OPENAI, base_url=fake.url + "/v1", model="approval-and-calculator",
        tools=["webhook_post", "calculator"],
    )
    session = await db(session_create, owner=user, mode="direct", agent="gpt")
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "Do two things"})
    await frames_until(comm, "approval.requested")
    # The calculator call queued behind the approval is not stalled, however long the person takes.
    from django.utils import timezone

    from chat.turn import agentic

    await db(lambda: ToolCall.objects.filter(session=session).update(created_at=timezone.now() - timezone.timedelta(minutes=5)))
    assert await db(agentic.stalled_replies) == []
    await db(lambda: Agent.objects.filter(slug="gpt").update(model="text"))
    await send(comm, {"type": "user_message", "content": "Forget it, just talk"})
    final = (await frames_until(comm, "message.completed", where=lambda f: f["message"]["type"] == "text"))[-1]["message"]
    assert (final["status"], final["content"]) == ("complete", TEXT)
    calls = await db(lambda: dict(ToolCall.objects.filter(session=session).values_list("name", "status")))
    assert calls == {"webhook_post": "superseded", "calculator": "superseded"}
    # The model sees a history it accepts: the shown call with its result, not the one never shown.
    (second,) = bodies(fake, "text")
    roles = [(m["role"], [c["function"]["name"] for c in m.get("tool_calls", [])]) for m in second["messages"]]
    assert roles == [("user", []), ("assistant", ["webhook_post"]), ("tool", []), ("user", [])]
    assert len(bodies(fake, "approval-and-calculator")) == 1  # no continuation of the superseded turn
    await comm.disconnect()


async def test_a_plan_step_waiting_for_approval_holds_the_plan_until_it_is_decided(user, token, fake, webhook):  # type: ignore[no-untyped-def]
    from chat.models import Plan

    await db(
        Agent.objects.create,
        slug="quokka", name="Quokka", description="quokka wallaby", provider=Agent.Provider.OPENAI,
        base_url=fake.url + "/v1", model="webhook-round", tools=["webhook_post"],
    )
    session = await db(session_create, owner=user)
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": f"/plan quokka wallaby post to {webhook.url}; write a summary"})
    plan = (await frames_until(comm, "plan.proposed"))[-1]
    assert plan["steps"][0]["agent"] == "quokka"
    await send(comm, {"type": "plan_decision", "plan_id": plan["plan_id"], "decision": "approve"})
    request = (await frames_until(comm, "approval.requested"))[-1]
    await asyncio.sleep(0.3)
    assert not await db(lambda: Message.objects.filter(session=session, content__startswith="Step 2").exists())
    assert (await db(lambda: Plan.objects.get(pk=plan["plan_id"]))).status == "running"
    assert webhook.bodies == []
    await send(comm, {"type": "hitl_decision", "approval_id": request["approval_id"], "decision": "approve"})
    frames = await frames_until(comm, "message.completed", where=lambda f: f["message"]["content"].startswith("Step 2"))
    contents = [f["message"]["content"] for f in frames if f["type"] == "message.completed" and f["message"]["type"] == "text"]
    assert "Posted." in contents and contents.index("Posted.") < len(contents) - 1
    assert webhook.bodies == [{"from": "step"}]
    for _ in range(100):
        stored = await db(lambda: Plan.objects.get(pk=plan["plan_id"]))
        if stored.status != "running":
            break
        await asyncio.sleep(0.02)
    assert (stored.status, stored.current_step) == ("done", 2)
    await comm.disconnect()
