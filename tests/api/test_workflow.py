from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.api import (
    SESSIONS,
    assert_error,
    messages_url,
    reactions_url,
    session_url,
    walk,
)

pytestmark = pytest.mark.django_db


def test_token_login_then_a_whole_conversation_lifecycle(make_user):
    make_user("dana", password="Correct-Horse-9")
    client = APIClient()

    response = client.post("/api/v1/auth/token/", {"username": "dana", "password": "Correct-Horse-9"}, format="json")
    assert response.status_code == 200, response.content
    token = response.json()["token"]
    assert token
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")

    response = client.post(SESSIONS, {"title": "Weekend", "mode": "direct", "agent": "assistant"}, format="json")
    assert response.status_code == 201, response.content
    session = response.json()

    sent = []
    for text in ("Where should we go?", "Somewhere warm.", "And cheap."):
        response = client.post(
            "/api/v1/messages/", {"session": session["id"], "type": "text", "content": text, "reply": False}, format="json"
        )
        assert response.status_code == 201, response.content
        sent.append(response.json())
    assert [m["seq"] for m in sent] == [1, 2, 3]

    response = client.post(reactions_url(sent[1]["id"]), {"emoji": "\U0001f525"}, format="json")
    assert response.status_code == 201

    messages, _ = walk(client, f"{messages_url(session['id'])}?limit=2")
    assert [m["content"] for m in messages] == ["Where should we go?", "Somewhere warm.", "And cheap."]
    assert messages[1]["reactions"] == [{"emoji": "\U0001f525", "count": 1, "me": True}]

    listed = client.get(SESSIONS).json()["results"]
    assert [(s["id"], s["message_count"]) for s in listed] == [(session["id"], 3)]

    response = client.patch(session_url(session["id"]), {"title": "Weekend in Lisbon"}, format="json")
    assert response.status_code == 200
    assert client.get(session_url(session["id"])).json()["title"] == "Weekend in Lisbon"

    assert client.delete(session_url(session["id"])).status_code == 204
    assert client.get(SESSIONS).json()["results"] == []
    assert_error(client.get(messages_url(session["id"])), 404, "not_found")


def test_token_login_with_a_wrong_password_is_400_and_gives_no_token(make_user):
    make_user("erin", password="Right-Pass-1")
    response = APIClient().post("/api/v1/auth/token/", {"username": "erin", "password": "wrong"}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert "token" not in body
    assert body["code"] == "validation_error"


def test_the_same_token_is_returned_on_each_login(make_user):
    make_user("fay", password="Right-Pass-1")
    client = APIClient()
    credentials = {"username": "fay", "password": "Right-Pass-1"}
    first = client.post("/api/v1/auth/token/", credentials, format="json").json()["token"]
    second = client.post("/api/v1/auth/token/", credentials, format="json").json()["token"]
    assert first == second
