"""Streaming turns over the socket: every turn saved, nothing lost (contract: "Turn guarantees")."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db.models import F
from django.utils import timezone

from chat.models import Message, Worker
from chatproject.asgi import application
from sessions_app.models import ChatSession
from sessions_app.services import session_create
from tests.ws import db, frames_until, merge_text, next_frame, open_socket, send, token_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def session(user):  # type: ignore[no-untyped-def]
    return session_create(owner=user, title="Streaming")


def messages_of(session_id) -> list[Message]:  # type: ignore[no-untyped-def]
    return list(Message.objects.filter(session_id=session_id).order_by("seq"))


async def wait_for_status(message_id: str, statuses: set[str], timeout: float = 15) -> Message:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        message = await db(lambda: Message.objects.get(pk=message_id))
        if message.status in statuses:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"message {message_id} still {message.status}")


async def test_full_turn_is_persisted_and_read_back_over_rest(session, token, api):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    ready = await next_frame(comm)
    assert ready["type"] == "session.ready" and ready["last_seq"] == 0 and ready["active"] == []
    await send(comm, {"type": "user_message", "content": "Hello there", "client_id": str(uuid.uuid4())})
    frames = await frames_until(comm, "message.completed")
    created = [f["message"] for f in frames if f["type"] == "message.created"]
    assert [(m["role"], m["seq"], m["status"]) for m in created] == [("user", 1, "complete"), ("assistant", 2, "streaming")]
    reply_id = created[1]["id"]
    assert created[1]["reply_to"] == created[0]["id"]
    deltas = [f for f in frames if f["type"] == "message.delta"]
    assert len(deltas) > 1, "the demo reply streams in several deltas"
    assert [d["offset"] for d in deltas] == [sum(len(x["delta"]) for x in deltas[:i]) for i in range(len(deltas))]
    completed = frames[-1]["message"]
    assert completed["status"] == "complete" and completed["id"] == reply_id
    assert completed["content"] == "".join(d["delta"] for d in deltas)
    assert "usage" in completed["metadata"]
    await comm.disconnect()

    page = await database_sync_to_async(api.get)(f"/api/v1/sessions/{session.pk}/messages/")
    results = page.json()["results"]
    assert [(m["seq"], m["role"], m["status"]) for m in results] == [(1, "user", "complete"), (2, "assistant", "complete")]
    assert results[1]["content"] == completed["content"]
    assert results[0]["content"] == "Hello there"


async def test_reply_survives_disconnect(session, token):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/slow 15"})
    frames = await frames_until(comm, "message.delta")
    reply_id = frames[-1]["message_id"]
    await comm.disconnect()  # the socket closes mid-stream; the reply goes on

    message = await wait_for_status(reply_id, {"complete", "failed", "cancelled", "interrupted"})
    assert message.status == "complete"
    assert message.content == "".join(f"chunk {i} " for i in range(1, 16))


async def test_reconnect_mid_stream_gets_snapshot_and_the_rest(session, token, settings):  # type: ignore[no-untyped-def]
    # Checkpoint often so the snapshot from the database is neither empty nor complete.
    settings.CHAT = {**settings.CHAT, "CHECKPOINT_INTERVAL": 0.1, "DEMO_SLOW_DELAY": 0.05}
    first = await open_socket(session.pk, token=token)
    await next_frame(first)
    await send(first, {"type": "user_message", "content": "/slow 40"})
    frames = await frames_until(first, "message.delta", where=lambda f: f["offset"] > 60)
    reply_id = frames[-1]["message_id"]
    await first.disconnect()
    await asyncio.sleep(0.25)

    second = await open_socket(session.pk, token=token)
    ready = await next_frame(second)
    assert [a["message_id"] for a in ready["active"]] == [reply_id]
    snapshot = ready["active"][0]
    assert snapshot["offset"] == len(snapshot["content"]) > 0
    rest = await frames_until(second, "message.completed")
    final = rest[-1]["message"]
    shown = merge_text(snapshot["content"], rest, reply_id)
    saved = await db(lambda: Message.objects.get(pk=reply_id))
    assert shown == final["content"] == saved.content == "".join(f"chunk {i} " for i in range(1, 41))
    await second.disconnect()


async def test_cancel_stops_reply_and_keeps_partial_text(session, token):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/slow 200"})
    frames = await frames_until(comm, "message.delta", where=lambda f: f["offset"] > 20)
    reply_id = frames[-1]["message_id"]
    await send(comm, {"type": "cancel", "message_id": reply_id})
    rest = await frames_until(comm, "message.completed")
    final = rest[-1]["message"]
    assert final["status"] == "cancelled"
    assert final["content"].startswith("chunk 1 chunk 2 ") and "chunk 200" not in final["content"]
    saved = await db(lambda: Message.objects.get(pk=reply_id))
    assert (saved.status, saved.content) == ("cancelled", final["content"])
    await comm.disconnect()


async def test_second_message_while_streaming_is_busy_and_saves_nothing(session, token):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/slow 30"})
    await frames_until(comm, "message.delta")
    await send(comm, {"type": "user_message", "content": "another", "request_id": "r-2"})
    frames = await frames_until(comm, "error")
    assert frames[-1]["code"] == "busy" and frames[-1]["request_id"] == "r-2"
    assert await db(lambda: Message.objects.filter(session=session).count()) == 2
    await send(comm, {"type": "cancel"})
    await frames_until(comm, "message.completed")
    await comm.disconnect()


async def test_provider_failure_ends_reply_failed_with_error(session, token):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/fail"})
    frames = await frames_until(comm, "message.completed")
    final = frames[-1]["message"]
    assert final["status"] == "failed"
    assert "failed" in final["error"]
    assert final["content"].startswith("Starting to answer")
    await comm.disconnect()


async def test_duplicate_client_id_never_makes_a_second_message(session, token):  # type: ignore[no-untyped-def]
    client_id = str(uuid.uuid4())
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "once", "client_id": client_id})
    await frames_until(comm, "message.completed")
    await send(comm, {"type": "user_message", "content": "once", "client_id": client_id})
    again = [await next_frame(comm), await next_frame(comm)]
    assert [f["type"] for f in again] == ["message.created", "message.created"]
    assert again[0]["message"]["client_id"] == client_id
    assert again[1]["message"]["reply_to"] == again[0]["message"]["id"]
    assert await db(lambda: Message.objects.filter(session=session).count()) == 2
    await comm.disconnect()


async def test_cookie_socket_from_another_origin_is_refused(session, client, user):  # type: ignore[no-untyped-def]
    await database_sync_to_async(client.force_login)(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    evil = WebsocketCommunicator(
        application, f"/ws/sessions/{session.pk}/", headers=[(b"cookie", cookie), (b"origin", b"https://evil.example")]
    )
    connected, code = await evil.connect()
    if connected:
        closed = await evil.receive_output()
        code = closed.get("code")
    assert code == 4401
    good = WebsocketCommunicator(
        application, f"/ws/sessions/{session.pk}/", headers=[(b"cookie", cookie), (b"origin", b"http://localhost"), (b"host", b"localhost")]
    )
    assert (await good.connect())[0]
    assert (await next_frame(good))["type"] == "session.ready"
    await good.disconnect()


async def test_unauthenticated_socket_closes_4401(session):  # type: ignore[no-untyped-def]
    for headers in ([], [(b"authorization", b"Token not-a-token")]):
        comm = WebsocketCommunicator(application, f"/ws/sessions/{session.pk}/", headers=headers)
        connected, _ = await comm.connect()
        assert connected
        assert (await comm.receive_output())["code"] == 4401


async def test_foreign_or_missing_session_closes_4404(session, other_user):  # type: ignore[no-untyped-def]
    other_token = await db(token_for, other_user)
    for session_id in (session.pk, uuid.uuid4(), "not-a-uuid"):
        comm = WebsocketCommunicator(
            application, f"/ws/sessions/{session_id}/", headers=[(b"authorization", f"Token {other_token}".encode())]
        )
        connected, _ = await comm.connect()
        assert connected
        assert (await comm.receive_output())["code"] == 4404


BAD_FRAMES = [
    ("not json", "{nope", "invalid_json"),
    ("not an object", "[1, 2]", "invalid_json"),
    ("unknown type", '{"type": "dance"}', "unknown_type"),
    ("missing type", '{"content": "hi"}', "validation_error"),
    ("content missing", '{"type": "user_message"}', "validation_error"),
    ("content wrong type", '{"type": "user_message", "content": 42}', "validation_error"),
    ("content blank", '{"type": "user_message", "content": "   "}', "validation_error"),
    ("content too long", '{"type": "user_message", "content": "' + "x" * 40000 + '"}', "validation_error"),
    ("client_id not a uuid", '{"type": "user_message", "content": "hi", "client_id": "abc"}', "validation_error"),
    ("cancel with bad id", '{"type": "cancel", "message_id": "zzz"}', "validation_error"),
    ("cancel with nothing running", '{"type": "cancel"}', "not_found"),
    ("switch to unknown agent", '{"type": "switch_agent", "agent": "nobody"}', "agent_not_found"),
    ("decision on unknown approval", '{"type": "hitl_decision", "approval_id": "' + str(uuid.UUID(int=1)) + '", "decision": "approve"}', "not_found"),
    ("bad decision", '{"type": "plan_decision", "plan_id": "' + str(uuid.UUID(int=1)) + '", "decision": "maybe"}', "validation_error"),
]


@pytest.mark.parametrize(("case", "raw", "code"), BAD_FRAMES, ids=[c[0] for c in BAD_FRAMES])
async def test_bad_frame_gets_error_and_socket_stays_usable(session, token, case, raw, code):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await comm.send_to(text_data=raw)
    error = await next_frame(comm)
    assert (error["type"], error["code"]) == ("error", code), error
    assert error["detail"]
    await send(comm, {"type": "ping"})
    assert (await next_frame(comm))["type"] == "pong"
    assert await db(lambda: Message.objects.filter(session=session).count()) == 0
    await comm.disconnect()


async def test_binary_frame_and_flood_get_errors(session, token, settings):  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "WS_FRAMES_PER_SECOND": 5}
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await comm.send_to(bytes_data=b"\x00\x01")
    assert (await next_frame(comm))["code"] == "invalid_json"
    for i in range(10):
        await send(comm, {"type": "ping", "request_id": f"p{i}"})
    answers = [await next_frame(comm) for _ in range(10)]
    limited = [a for a in answers if a.get("code") == "rate_limited"]
    # Over the rate a frame is dropped unread (no JSON parsed): its error carries no request_id.
    assert limited and all("request_id" not in a for a in limited)
    assert all(a["type"] == "pong" for a in answers if a.get("code") != "rate_limited")
    await asyncio.sleep(1.1)
    await send(comm, {"type": "ping"})
    assert (await next_frame(comm))["type"] == "pong"
    await comm.disconnect()


async def test_a_frame_over_the_byte_limit_is_refused_even_under_it_in_characters(session, token, settings):  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "WS_MAX_FRAME_BYTES": 4000}
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    frame = json.dumps({"type": "user_message", "content": "€" * 1500, "request_id": 9}, ensure_ascii=False)
    assert len(frame) < 4000 < len(frame.encode())
    await comm.send_to(text_data=frame)
    error = await next_frame(comm)
    assert (error["code"], "too large" in error["detail"]) == ("validation_error", True)
    assert await db(lambda: Message.objects.filter(session=session).count()) == 0
    await comm.disconnect()


async def test_slow_command_takes_its_count_and_ignores_what_follows(session, token):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/slow 3 and then some words"})
    final = (await frames_until(comm, "message.completed"))[-1]["message"]
    assert final["content"] == "chunk 1 chunk 2 chunk 3 "
    await comm.disconnect()


async def test_two_tabs_see_the_same_events(session, token):  # type: ignore[no-untyped-def]
    tab1 = await open_socket(session.pk, token=token)
    tab2 = await open_socket(session.pk, token=token)
    await next_frame(tab1)
    await next_frame(tab2)
    await send(tab1, {"type": "user_message", "content": "seen by both"})
    one = await frames_until(tab1, "message.completed")
    two = await frames_until(tab2, "message.completed")
    assert [f["type"] for f in one] == [f["type"] for f in two]
    assert one[-1]["message"]["content"] == two[-1]["message"]["content"]
    await tab1.disconnect()
    await tab2.disconnect()


async def test_rest_send_with_reply_streams_to_sockets(session, token, api):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    response = await database_sync_to_async(api.post)(
        "/api/v1/messages/", {"session": str(session.pk), "content": "from REST"}, format="json"
    )
    assert response.status_code == 201
    frames = await frames_until(comm, "message.completed")
    created = [f["message"] for f in frames if f["type"] == "message.created"]
    assert created[0]["id"] == response.json()["id"]
    assert frames[-1]["message"]["reply_to"] == response.json()["id"]
    assert frames[-1]["message"]["status"] == "complete"
    await comm.disconnect()


def _orphan_reply(session: ChatSession, worker_id: str, heartbeat_age: float) -> Message:
    from chat.turn.turns import turn_start

    turn = turn_start(session_id=session.pk, user=session.owner, content="question", reply=False)
    Worker.objects.update_or_create(
        pk=worker_id,
        defaults={"hostname": "elsewhere", "pid": 1, "heartbeat_at": timezone.now() - timezone.timedelta(seconds=heartbeat_age)},
    )
    session.refresh_from_db()
    seq = session.seq + 1
    ChatSession.objects.filter(pk=session.pk).update(seq=seq, message_count=F("message_count") + 1)
    return Message.objects.create(
        session=session, seq=seq, role="assistant", content="partial text", status="streaming",
        reply_to=turn.user_message, worker_id=worker_id,
    )


async def test_reply_of_dead_process_is_marked_interrupted_when_socket_opens(session, token):  # type: ignore[no-untyped-def]
    orphan = await db(_orphan_reply, session, "dead-worker", 3600)
    comm = await open_socket(session.pk, token=token)
    ready = await next_frame(comm)
    assert ready["active"] == []
    saved = await db(lambda: Message.objects.get(pk=orphan.pk))
    assert (saved.status, saved.content) == ("interrupted", "partial text")
    assert saved.error
    await comm.disconnect()


async def test_reply_of_an_earlier_life_of_this_process_slot_is_marked_at_once(session, token):  # type: ignore[no-untyped-def]
    """A container restarted with the same hostname and pid: the old row's heartbeat is fresh, yet it is dead."""
    import os

    from chat.turn import liveness as workers

    orphan = await db(_orphan_reply, session, f"{workers.HOSTNAME[:40]}-{os.getpid()}-0ldl1fe0", 0)
    await db(lambda: Worker.objects.filter(pk=orphan.worker_id).update(hostname=workers.HOSTNAME, pid=os.getpid()))
    comm = await open_socket(session.pk, token=token)
    ready = await next_frame(comm)
    assert ready["active"] == []
    saved = await db(lambda: Message.objects.get(pk=orphan.pk))
    assert (saved.status, saved.content) == ("interrupted", "partial text")
    await comm.disconnect()


async def test_reply_of_live_process_elsewhere_is_never_marked(session, token):  # type: ignore[no-untyped-def]
    orphan = await db(_orphan_reply, session, "live-worker", 0)
    comm = await open_socket(session.pk, token=token)
    ready = await next_frame(comm)
    assert [a["message_id"] for a in ready["active"]] == [str(orphan.pk)]
    assert ready["active"][0] == {"message_id": str(orphan.pk), "offset": len("partial text"), "content": "partial text"}
    saved = await db(lambda: Message.objects.get(pk=orphan.pk))
    assert saved.status == "streaming"
    await comm.disconnect()


async def test_text_so_far_is_checkpointed_while_streaming(session, token, settings):  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "CHECKPOINT_INTERVAL": 0.2, "DEMO_SLOW_DELAY": 0.05}
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/slow 30"})
    frames = await frames_until(comm, "message.delta", where=lambda f: f["offset"] > 40)
    reply_id = frames[-1]["message_id"]
    await asyncio.sleep(0.5)
    saved = await db(lambda: Message.objects.get(pk=reply_id))
    assert saved.status == "streaming" and saved.content.startswith("chunk 1 ") and len(saved.content) > 0
    await frames_until(comm, "message.completed")
    await comm.disconnect()


async def test_cancel_sent_right_after_the_message_still_stops_the_reply(session, token):  # type: ignore[no-untyped-def]
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "/slow 300"})
    await send(comm, {"type": "cancel"})
    final = (await frames_until(comm, "message.completed"))[-1]["message"]
    assert final["status"] == "cancelled"
    assert "chunk 300" not in final["content"]
    await comm.disconnect()


async def test_frames_carry_exactly_the_message_shape_of_rest(session, token, api):  # type: ignore[no-untyped-def]
    """Frames build the Message shape by hand (the hot path); it must be what the REST API gives, field for field."""
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "same shape é ✓", "client_id": str(uuid.uuid4())})
    frames = await frames_until(comm, "message.completed")
    await send(comm, {"type": "user_message", "content": '/tool calculator {"expression": "6*7"}'})
    frames += await frames_until(
        comm, "message.completed", where=lambda f: f["message"]["type"] == "text" and "tools said" in f["message"]["content"]
    )
    await comm.disconnect()
    rest = {m["id"]: m for m in (await database_sync_to_async(api.get)(f"/api/v1/sessions/{session.pk}/messages/?limit=200")).json()["results"]}
    latest: dict[str, dict] = {}
    for frame in frames:
        if frame["type"] in ("message.created", "message.completed"):
            latest[frame["message"]["id"]] = frame["message"]
    assert {m["type"] for m in latest.values()} >= {"text", "tool_call", "tool_result"}
    assert set(latest) == set(rest)
    for message_id, message in latest.items():
        expected = rest[message_id]
        expected["metadata"].pop("continued", None)  # bookkeeping of the turn, set after the reply's last frame
        assert list(message) == list(expected)
        assert message == expected, message_id


async def test_the_hand_built_message_shape_is_drf_s_field_by_field(session, token, api):  # type: ignore[no-untyped-def]
    """REST pages and frames build the Message shape by hand; DRF's walk over the declared fields (the schema) must agree."""
    from chat.serializers import MessageSerializer

    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    await send(comm, {"type": "user_message", "content": "é ✓ \U0001f600 <b>x</b>", "client_id": str(uuid.uuid4())})
    await frames_until(comm, "message.completed")
    await send(comm, {"type": "user_message", "content": '/tool calculator {"expression": "6*7"}'})
    await frames_until(comm, "message.completed", where=lambda f: "tools said" in f["message"]["content"])
    await send(comm, {"type": "user_message", "content": "/fail"})
    await frames_until(comm, "message.completed", where=lambda f: f["message"]["status"] == "failed")
    await comm.disconnect()
    first = await db(lambda: Message.objects.filter(session=session, role="assistant").order_by("seq").first())
    assert (await database_sync_to_async(api.post)(f"/api/v1/messages/{first.pk}/reactions/", {"emoji": "👍"}, format="json")).status_code == 201

    def compare() -> int:
        from django.db.models import Prefetch

        from chat.models import Reaction

        messages = Message.objects.filter(session=session).select_related("agent").prefetch_related(
            Prefetch("reactions", queryset=Reaction.objects.order_by("created_at", "pk"))
        )
        for message in messages:
            serializer = MessageSerializer(message, context={"viewer_id": session.owner_id})
            assert serializer.data == serializer.to_representation_by_fields(message), message.seq
        return len(messages)

    assert await db(compare) >= 8
