"""Property-based fuzzing (Hypothesis) of every socket frame type and every REST body, with real ids.

For each generated input: never a server error (no `internal_error` frame, no 5xx), and an input
that is refused (an `error` frame, a 4xx) changes nothing that is stored. Bounded: FUZZ_EXAMPLES
examples per test (environment, default 30), derandomised so a run is repeatable.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat.models import Approval, Message, Plan, QueuedMessage, Reaction, ToolCall
from sessions_app.models import ChatSession
from sessions_app.services import session_create
from tests.ws import db, frames_until, next_frame, open_socket, send, token_for

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
FUZZ = hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

pytestmark = pytest.mark.django_db(transaction=True)

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
texts = st.text(max_size=40) | st.sampled_from(["", " ", "\x00", "\ud800", "x" * 40000, "/slow 3", "/fail", "/tool calculator {\"expression\": \"2**3001\"}"])
FRAME_TYPES = [
    "user_message", "regenerate", "switch_branch", "queue_cancel", "cancel", "switch_agent", "tool_result", "hitl_decision", "plan_decision", "resync",
    "ping", "no_such_type",
]


def frames(ids: dict[str, str]) -> st.SearchStrategy[Any]:
    """Frames of every type, their fields of any JSON type, ids real (this user's, another user's) or made up."""
    some_id = st.sampled_from(list(ids.values())) | st.uuids().map(str) | values
    fields = {
        "content": texts | values, "client_id": st.uuids().map(str) | values, "message_id": some_id, "agent": texts | values,
        "tool_call_id": some_id, "output": values, "is_error": values, "approval_id": some_id, "plan_id": some_id,
        "decision": st.sampled_from(["approve", "reject"]) | values, "comment": texts | values,
        "request_id": st.integers() | st.text(max_size=120) | values,
        "on_busy": st.sampled_from(["reject", "enqueue", "interrupt"]) | values, "edit_of": some_id, "queued_id": some_id,
    }
    structured = st.fixed_dictionaries({"type": st.sampled_from(FRAME_TYPES) | values}, optional=fields).map(json.dumps)
    return structured | st.text(min_size=1, max_size=50) | st.sampled_from(["[1]", "null", '{"type": ' + "[" * 3000 + "]" * 3000 + "}"])


def stored(session_ids: list[Any]) -> list[Any]:
    """Everything a frame or a request could change, of these sessions."""
    return [
        sorted(
            ChatSession.objects.filter(pk__in=session_ids).values_list("pk", "title", "mode", "agent_id", "seq", "message_count", "leaf_id", "on_busy", "queued")
        ),
        sorted(QueuedMessage.objects.filter(session_id__in=session_ids).values_list("pk", "content")),
        sorted(Message.objects.filter(session_id__in=session_ids).values_list("pk", "seq", "status", "content")),
        sorted(ToolCall.objects.filter(session_id__in=session_ids).values_list("pk", "status")),
        sorted(Approval.objects.filter(session_id__in=session_ids).values_list("pk", "status")),
        sorted(Plan.objects.filter(session_id__in=session_ids).values_list("pk", "status")),
        sorted(Reaction.objects.filter(message__session_id__in=session_ids).values_list("message_id", "user_id", "emoji")),
    ]


def quiet(session_ids: list[Any]) -> None:
    """Wait until nothing streams and nothing is queued in these sessions (a turn an earlier valid frame started)."""
    import time

    for _ in range(400):
        if not Message.objects.filter(session_id__in=session_ids, status=Message.Status.STREAMING).exists() and not QueuedMessage.objects.filter(
            session_id__in=session_ids
        ).exists():
            return
        time.sleep(0.025)


def _world(user: Any, other_user: Any) -> dict[str, Any]:
    """The user's session, and another user's session with a message (ids that must be refused as missing)."""
    from chat.turn import turns

    mine = session_create(owner=user, title="fuzz")
    theirs = session_create(owner=other_user, title="not yours")
    turns.turn_start(session_id=theirs.pk, user=other_user, content="hello", reply=False)
    return {"mine": mine, "theirs": theirs}


@pytest.fixture
def world(user, other_user, settings):  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "WS_FRAMES_PER_SECOND": 100000, "WS_RESYNCS_PER_MINUTE": 1000000}
    return _world(user, other_user)


@pytest.fixture
def ids(world) -> dict[str, str]:  # type: ignore[no-untyped-def]
    theirs = Message.objects.filter(session=world["theirs"]).first()
    return {"my_session": str(world["mine"].pk), "their_session": str(world["theirs"].pk), "their_message": str(theirs.pk)}


@given(data=st.data())
@FUZZ
async def test_socket_frames_of_every_type_never_fail_the_server_and_refused_ones_change_nothing(data, world, ids, user):  # type: ignore[no-untyped-def]
    sessions = [world["mine"].pk, world["theirs"].pk]
    comm = await open_socket(world["mine"].pk, token=await db(token_for, user))
    assert (await next_frame(comm))["type"] == "session.ready"
    try:
        for raw in data.draw(st.lists(frames(ids), min_size=1, max_size=6), label="frames"):
            await db(quiet, sessions)
            before = await db(stored, sessions)
            await comm.send_to(text_data=raw)
            await send(comm, {"type": "ping"})
            answers = await frames_until(comm, "pong", timeout=30)
            errors = [f for f in answers if f["type"] == "error"]
            assert not [f for f in errors if f["code"] == "internal_error"], (raw[:200], errors)
            if errors:
                assert await db(stored, sessions) == before, (raw[:200], errors)
    finally:
        await comm.disconnect()
        await db(quiet, sessions)


bodies = st.dictionaries(
    st.sampled_from(["session", "type", "content", "reply", "title", "mode", "agent", "emoji", "on_busy", "edit_of", "message"]), values | texts, max_size=5,
)


@given(data=st.data())
@FUZZ
def test_rest_bodies_never_fail_the_server_and_refused_ones_change_nothing(data, world, ids, api):  # type: ignore[no-untyped-def]
    mine = str(world["mine"].pk)
    message = Message.objects.filter(session=world["mine"]).first()
    targets = [
        ("post", "/api/v1/sessions/"),
        ("patch", f"/api/v1/sessions/{mine}/"),
        ("patch", f"/api/v1/sessions/{ids['their_session']}/"),
        ("post", "/api/v1/messages/"),
        ("post", f"/api/v1/messages/{ids['their_message']}/reactions/"),
        ("post", f"/api/v1/messages/{ids['their_message']}/regenerate/"),
        ("post", f"/api/v1/sessions/{mine}/switch/"),
        ("post", f"/api/v1/sessions/{ids['their_session']}/switch/"),
        ("delete", f"/api/v1/sessions/{mine}/queue/{ids['their_message']}/"),
    ] + ([("post", f"/api/v1/messages/{message.pk}/reactions/"), ("post", f"/api/v1/messages/{message.pk}/regenerate/")] if message is not None else [])
    method, path = data.draw(st.sampled_from(targets), label="endpoint")
    body = data.draw(bodies, label="body")
    if data.draw(st.booleans(), label="real session"):
        body["session"] = data.draw(st.sampled_from([mine, ids["their_session"]]), label="which")
    raw = data.draw(st.just(json.dumps(body)) | st.text(max_size=30), label="raw")
    sessions = list(ChatSession.objects.values_list("pk", flat=True))
    quiet(sessions)
    before = stored(sessions)
    count = ChatSession.objects.count()
    response = getattr(api, method)(path, raw, content_type="application/json")
    assert response.status_code < 500, (method, path, raw[:200], response.content[:300])
    if response.status_code >= 400:
        assert response.json()["code"]  # the one error shape
        assert stored(sessions) == before and ChatSession.objects.count() == count, (method, path, raw[:200])
    quiet(list(ChatSession.objects.values_list("pk", flat=True)))

