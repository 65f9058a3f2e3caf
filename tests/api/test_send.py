from __future__ import annotations

import uuid

import pytest

from chat.models import Agent, Message
from tests.api import (
    MESSAGE_KEYS,
    MESSAGES,
    assert_error,
    create_session,
    messages_url,
    send,
    wait_until_no_streaming,
)

pytestmark = pytest.mark.django_db


def test_send_returns_201_with_the_user_message(api):
    session = create_session(api)
    response = send(api, session["id"], "Hello there")
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == MESSAGE_KEYS
    uuid.UUID(body["id"])
    assert body["session"] == session["id"]
    assert body["seq"] == 1
    assert body["role"] == "user"
    assert body["type"] == "text"
    assert body["content"] == "Hello there"
    assert body["status"] == "complete"
    assert body["reactions"] == []
    assert body["reply_to"] is None
    assert body["error"] is None
    assert body["metadata"] == {}
    assert Message.objects.filter(pk=body["id"], session_id=session["id"]).count() == 1


def test_send_keeps_content_exactly_as_written(api):
    session = create_session(api)
    content = "  indented\n\n<b>not html</b> \u00e9\u00e8 \U0001f600  "
    assert send(api, session["id"], content).json()["content"] == content


def test_send_increments_seq(api):
    session = create_session(api)
    seqs = [send(api, session["id"], f"m{i}").json()["seq"] for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]


def test_send_updates_the_session_message_count(api):
    session = create_session(api)
    send(api, session["id"])
    send(api, session["id"])
    assert api.get(f"/api/v1/sessions/{session['id']}/").json()["message_count"] == 2


def test_send_to_an_unknown_session_is_404(api):
    assert_error(send(api, str(uuid.uuid4())), 404, "not_found")
    assert not Message.objects.exists()


def test_send_to_another_users_session_is_404_and_nothing_is_saved(api, other_api):
    theirs = create_session(other_api)
    assert_error(send(api, theirs["id"], "intrusion"), 404, "not_found")
    assert not Message.objects.exists()
    assert other_api.get(messages_url(theirs["id"])).json()["total_count"] == 0


@pytest.mark.parametrize("content", ["", "   ", "\n\t  \n"], ids=["empty", "spaces", "whitespace"])
def test_send_blank_content_is_400_and_nothing_is_saved(api, content):
    session = create_session(api)
    body = assert_error(send(api, session["id"], content), 400, "validation_error")
    assert "content" in body["fields"]
    assert not Message.objects.exists()


def test_send_oversized_content_is_400_and_nothing_is_saved(api, settings):
    session = create_session(api)
    limit = settings.CHAT["MAX_MESSAGE_CHARS"]
    body = assert_error(send(api, session["id"], "x" * (limit + 1)), 400, "validation_error")
    assert "content" in body["fields"]
    assert not Message.objects.exists()


def test_send_content_of_exactly_the_limit_is_accepted(api, settings):
    settings.CHAT = {**settings.CHAT, "MAX_MESSAGE_CHARS": 50}
    session = create_session(api)
    assert send(api, session["id"], "x" * 50).status_code == 201
    assert_error(send(api, session["id"], "x" * 51), 400, "validation_error")
    assert Message.objects.count() == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("content", 42),
        ("content", 4.2),
        ("content", ["hello"]),
        ("content", {"text": "hello"}),
        ("content", None),
        ("reply", "maybe"),
        ("reply", [True]),
        ("session", "not-a-uuid"),
        ("session", 17),
        ("session", None),
    ],
)
def test_send_with_wrong_types_is_400_validation_error_and_nothing_is_saved(api, field, value):
    session = create_session(api)
    body = {"session": session["id"], "type": "text", "content": "hello", "reply": False, field: value}
    error = assert_error(api.post(MESSAGES, body, format="json"), 400, "validation_error")
    assert field in error["fields"]
    assert not Message.objects.exists()


@pytest.mark.parametrize("missing", ["session", "content"])
def test_send_without_a_required_field_is_400(api, missing):
    session = create_session(api)
    body = {"session": session["id"], "type": "text", "content": "hello", "reply": False}
    del body[missing]
    error = assert_error(api.post(MESSAGES, body, format="json"), 400, "validation_error")
    assert missing in error["fields"]


@pytest.mark.parametrize(
    "raw",
    [b'{"session": ', b"not json at all", b"\xff\xfe\x00garbage", b'{"content": "a"} trailing', b""],
    ids=["truncated", "text", "binary", "trailing", "empty"],
)
def test_send_malformed_json_is_400_invalid_json_never_500(api, raw):
    response = api.post(MESSAGES, raw, content_type="application/json")
    assert response.status_code == 400, response.content
    body = response.json()
    # An empty body is no JSON document at all: the fields are missing, as for `{}`.
    assert body["code"] == ("invalid_json" if raw else "validation_error"), body
    assert not Message.objects.exists()


@pytest.mark.parametrize("raw", [b"[1, 2, 3]", b'"just a string"', b"42", b"null"])
def test_send_json_that_is_not_an_object_is_400_never_500(api, raw):
    response = api.post(MESSAGES, raw, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "validation_error", response.content
    assert not Message.objects.exists()


@pytest.mark.parametrize("value", ["yes", "false", 1, 0, None, "on", []])
def test_send_reply_must_be_a_json_boolean(api, value):
    session = create_session(api)
    body = {"session": session["id"], "type": "text", "content": "hello", "reply": value}
    error = assert_error(api.post(MESSAGES, body, format="json"), 400, "validation_error")
    assert "reply" in error["fields"]
    assert not Message.objects.exists()


def test_send_to_a_session_deleted_meanwhile_is_404(api, monkeypatch):
    """The session goes (another tab, cleanup) between the ownership check and the turn's lock."""
    from sessions_app import selectors
    from sessions_app.models import ChatSession

    session = create_session(api)
    real_get = selectors.session_get

    def get_then_vanish(**kwargs):  # type: ignore[no-untyped-def]
        found = real_get(**kwargs)
        ChatSession.objects.filter(pk=found.pk).delete()
        return found

    monkeypatch.setattr("chat.api.session_get", get_then_vanish)
    assert_error(send(api, session["id"], "hello"), 404, "not_found")
    assert not Message.objects.exists()


def test_send_malformed_json_with_an_idempotency_key_is_400_invalid_json(api):
    response = api.post(MESSAGES, b"{oops", content_type="application/json", HTTP_IDEMPOTENCY_KEY="k-json")
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize("kind", ["tool_call", "plan", "image", ""])
def test_send_type_other_than_text_is_400(api, kind):
    session = create_session(api)
    body = {"session": session["id"], "type": kind, "content": "hello", "reply": False}
    error = assert_error(api.post(MESSAGES, body, format="json"), 400, "validation_error")
    assert "type" in error["fields"]
    assert not Message.objects.exists()


def test_send_form_encoded_body_is_415_not_500(api):
    session = create_session(api)
    response = api.post(MESSAGES, {"session": session["id"], "content": "hi"}, format="multipart")
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.django_db(transaction=True)
def test_send_with_reply_runs_the_assistant_turn_and_saves_the_reply(make_user):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    Agent.objects.get_or_create(slug="assistant", defaults={"name": "Assistant", "provider": "demo"})
    user = make_user("carol")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    session = create_session(client, mode="direct", agent="assistant")

    response = send(client, session["id"], "Tell me something", reply=True)
    assert response.status_code == 201, response.content
    user_message = response.json()
    assert user_message["role"] == "user"
    assert user_message["seq"] == 1

    messages = wait_until_no_streaming(client, session["id"])
    assert [m["seq"] for m in messages] == [1, 2]
    reply = messages[1]
    assert reply["role"] == "assistant"
    assert reply["reply_to"] == user_message["id"]
    assert reply["status"] == "complete"
    assert reply["agent"] == "assistant"
    assert reply["content"]
    assert reply["completed_at"]
