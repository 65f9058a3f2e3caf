from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chat.models import IdempotencyRecord, Message
from tests.api import MESSAGES, assert_error, create_session, messages_url, send
from tests.conftest import requires_postgres

pytestmark = pytest.mark.django_db


def test_replay_returns_the_same_status_and_message_and_creates_nothing(api):
    session = create_session(api)
    first = send(api, session["id"], "pay once", HTTP_IDEMPOTENCY_KEY="key-1")
    assert first.status_code == 201, first.content
    again = send(api, session["id"], "pay once", HTTP_IDEMPOTENCY_KEY="key-1")
    assert again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.json() == first.json()
    assert Message.objects.count() == 1
    assert api.get(messages_url(session["id"])).json()["total_count"] == 1


def test_replay_ignores_the_order_of_keys_in_the_body(api):
    session = create_session(api)
    first = api.post(
        MESSAGES, {"session": session["id"], "content": "x", "reply": False}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    again = api.post(
        MESSAGES, {"reply": False, "content": "x", "session": session["id"]}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.json()["id"] == again.json()["id"]
    assert Message.objects.count() == 1


def test_requests_without_a_key_are_not_deduplicated(api):
    session = create_session(api)
    assert send(api, session["id"], "same").status_code == 201
    assert send(api, session["id"], "same").status_code == 201
    assert Message.objects.count() == 2


def test_different_keys_create_different_messages(api):
    session = create_session(api)
    a = send(api, session["id"], "same", HTTP_IDEMPOTENCY_KEY="a").json()
    b = send(api, session["id"], "same", HTTP_IDEMPOTENCY_KEY="b").json()
    assert a["id"] != b["id"]
    assert [a["seq"], b["seq"]] == [1, 2]


def test_same_key_with_a_different_body_is_422_idempotency_key_reused(api):
    session = create_session(api)
    assert send(api, session["id"], "first body", HTTP_IDEMPOTENCY_KEY="key-2").status_code == 201
    response = send(api, session["id"], "another body", HTTP_IDEMPOTENCY_KEY="key-2")
    assert_error(response, 422, "idempotency_key_reused")
    assert list(Message.objects.values_list("content", flat=True)) == ["first body"]


def test_same_key_for_another_session_is_422(api):
    one = create_session(api)
    two = create_session(api)
    assert send(api, one["id"], "hi", HTTP_IDEMPOTENCY_KEY="key-3").status_code == 201
    assert_error(send(api, two["id"], "hi", HTTP_IDEMPOTENCY_KEY="key-3"), 422, "idempotency_key_reused")
    assert Message.objects.count() == 1


def test_keys_are_per_user(api, other_api):
    mine = create_session(api)
    theirs = create_session(other_api)
    alice = send(api, mine["id"], "hi", HTTP_IDEMPOTENCY_KEY="shared-key")
    bob = send(other_api, theirs["id"], "hi", HTTP_IDEMPOTENCY_KEY="shared-key")
    assert (alice.status_code, bob.status_code) == (201, 201)
    assert alice.json()["id"] != bob.json()["id"]
    assert bob.json()["session"] == theirs["id"]
    assert Message.objects.count() == 2


def test_another_user_cannot_replay_my_answer_with_my_key(api, other_api):
    mine = create_session(api)
    alice = send(api, mine["id"], "secret", HTTP_IDEMPOTENCY_KEY="k-leak")
    assert alice.status_code == 201
    bob = send(other_api, mine["id"], "secret", HTTP_IDEMPOTENCY_KEY="k-leak")
    assert_error(bob, 404, "not_found")
    assert b"secret" not in bob.content
    assert Message.objects.count() == 1


def test_an_expired_key_can_be_used_again(api):
    session = create_session(api)
    first = send(api, session["id"], "yesterday", HTTP_IDEMPOTENCY_KEY="old-key")
    assert first.status_code == 201
    IdempotencyRecord.objects.filter(key="old-key").update(created_at=timezone.now() - timedelta(hours=25))

    again = send(api, session["id"], "today", HTTP_IDEMPOTENCY_KEY="old-key")
    assert again.status_code == 201, again.content
    assert again.json()["id"] != first.json()["id"]
    assert again.json()["content"] == "today"
    assert Message.objects.count() == 2

    replay = send(api, session["id"], "today", HTTP_IDEMPOTENCY_KEY="old-key")
    assert replay.json()["id"] == again.json()["id"]
    assert Message.objects.count() == 2


def test_a_key_younger_than_24_hours_still_replays(api):
    session = create_session(api)
    first = send(api, session["id"], "recent", HTTP_IDEMPOTENCY_KEY="recent-key")
    IdempotencyRecord.objects.filter(key="recent-key").update(created_at=timezone.now() - timedelta(hours=23))
    again = send(api, session["id"], "recent", HTTP_IDEMPOTENCY_KEY="recent-key")
    assert again.json()["id"] == first.json()["id"]
    assert Message.objects.count() == 1


def test_a_failed_request_does_not_burn_the_key(api):
    session = create_session(api)
    failed = send(api, session["id"], "   ", HTTP_IDEMPOTENCY_KEY="retry-me")
    assert_error(failed, 400, "validation_error")
    fixed = send(api, session["id"], "now with content", HTTP_IDEMPOTENCY_KEY="retry-me")
    assert fixed.status_code == 201, fixed.content
    assert Message.objects.count() == 1


def test_a_request_for_a_missing_session_does_not_burn_the_key(api):
    import uuid

    session = create_session(api)
    assert_error(send(api, str(uuid.uuid4()), "hi", HTTP_IDEMPOTENCY_KEY="k404"), 404, "not_found")
    assert send(api, session["id"], "hi", HTTP_IDEMPOTENCY_KEY="k404").status_code == 201


def test_a_too_long_key_is_400(api):
    session = create_session(api)
    assert_error(send(api, session["id"], "hi", HTTP_IDEMPOTENCY_KEY="k" * 256), 400, "validation_error")
    assert not Message.objects.exists()
    assert send(api, session["id"], "hi", HTTP_IDEMPOTENCY_KEY="k" * 255).status_code == 201


def test_a_blank_key_is_400(api):
    session = create_session(api)
    assert_error(send(api, session["id"], "hi", HTTP_IDEMPOTENCY_KEY="   "), 400, "validation_error")
    assert not Message.objects.exists()


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_the_same_key_create_exactly_one_message(user):
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    session = create_session(client)
    barrier = threading.Barrier(12)

    def attempt(_: int) -> tuple[int, dict]:
        try:
            own = APIClient()
            own.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
            barrier.wait(timeout=10)
            response = send(own, session["id"], "exactly once", HTTP_IDEMPOTENCY_KEY="race-key")
            return response.status_code, response.json()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = [future.result(timeout=60) for future in [pool.submit(attempt, i) for i in range(12)]]

    statuses = sorted(status for status, _ in results)
    assert set(statuses) <= {201, 409}, results
    conflicts = [body for status, body in results if status == 409]
    assert all(body["code"] == "idempotency_key_in_use" for body in conflicts)
    created_ids = {body["id"] for status, body in results if status == 201}
    assert len(created_ids) == 1
    assert Message.objects.filter(session_id=session["id"]).count() == 1
    message = Message.objects.get(session_id=session["id"])
    assert str(message.pk) in created_ids
    assert message.seq == 1

    # Once settled, a retry replays the one answer.
    retry = send(client, session["id"], "exactly once", HTTP_IDEMPOTENCY_KEY="race-key")
    assert retry.status_code == 201
    assert retry.json()["id"] == str(message.pk)


def test_a_retry_while_the_first_request_is_in_flight_is_409_in_use(api, user):
    session = create_session(api)
    first = send(api, session["id"], "pay once", HTTP_IDEMPOTENCY_KEY="in-flight")
    assert first.status_code == 201
    # The state a request still being processed leaves: its claim is in progress.
    IdempotencyRecord.objects.filter(key="in-flight").update(state=IdempotencyRecord.State.IN_PROGRESS)
    assert_error(send(api, session["id"], "pay once", HTTP_IDEMPOTENCY_KEY="in-flight"), 409, "idempotency_key_in_use")
    assert Message.objects.count() == 1


def test_a_stale_claim_is_taken_over_but_a_finished_answer_is_replayed_for_a_day(api):
    session = create_session(api)
    first = send(api, session["id"], "pay once", HTTP_IDEMPOTENCY_KEY="old-done")
    an_hour_ago = timezone.now() - timedelta(hours=1)
    IdempotencyRecord.objects.filter(key="old-done").update(created_at=an_hour_ago)
    again = send(api, session["id"], "pay once", HTTP_IDEMPOTENCY_KEY="old-done")
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]

    # A claim whose request died long ago (still in progress, nothing committed) may run again.
    IdempotencyRecord.objects.create(user=IdempotencyRecord.objects.get(key="old-done").user, key="died",
                                     request_hash="x", state=IdempotencyRecord.State.IN_PROGRESS)
    IdempotencyRecord.objects.filter(key="died").update(created_at=an_hour_ago)
    IdempotencyRecord.objects.filter(key="died").update(request_hash=IdempotencyRecord.objects.get(key="old-done").request_hash)
    retried = send(api, session["id"], "pay once", HTTP_IDEMPOTENCY_KEY="died")
    assert retried.status_code == 201
    assert Message.objects.count() == 2
