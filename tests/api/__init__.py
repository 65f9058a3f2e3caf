"""REST API tests: everything goes through DRF's APIClient, as a client would."""

from __future__ import annotations

import time
from typing import Any

from rest_framework.response import Response
from rest_framework.test import APIClient

API = "/api/v1"
SESSIONS = f"{API}/sessions/"
MESSAGES = f"{API}/messages/"

SESSION_KEYS = {"id", "title", "mode", "agent", "created_at", "updated_at", "message_count", "usage", "leaf", "on_busy"}
MESSAGE_KEYS = {
    "id", "session", "seq", "role", "type", "content", "status", "agent", "client_id",
    "reply_to", "parent", "versions", "metadata", "error", "reactions", "created_at", "completed_at",
}


def session_url(session_id: str) -> str:
    return f"{SESSIONS}{session_id}/"


def messages_url(session_id: str) -> str:
    return f"{SESSIONS}{session_id}/messages/"


def reactions_url(message_id: str) -> str:
    return f"{MESSAGES}{message_id}/reactions/"


def create_session(client: APIClient, **body: Any) -> dict[str, Any]:
    response = client.post(SESSIONS, body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def send(client: APIClient, session_id: str, content: str = "hello", *, reply: bool = False, **headers: str) -> Response:
    """POST /messages/; `headers` are WSGI names, e.g. HTTP_IDEMPOTENCY_KEY."""
    body = {"session": str(session_id), "type": "text", "content": content, "reply": reply}
    return client.post(MESSAGES, body, format="json", **headers)


def send_ok(client: APIClient, session_id: str, content: str = "hello") -> dict[str, Any]:
    response = send(client, session_id, content)
    assert response.status_code == 201, response.content
    return response.json()


def walk(client: APIClient, url: str) -> tuple[list[dict[str, Any]], int]:
    """Follow `next` links from `url`; returns every result in order and the number of pages."""
    results: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        response = client.get(next_url)
        assert response.status_code == 200, response.content
        body = response.json()
        results.extend(body["results"])
        pages += 1
        assert pages < 1000, "pagination never ends"
        next_url = body["next"]
    return results, pages


def assert_error(response: Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def wait_until_no_streaming(client: APIClient, session_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Poll the messages endpoint until no reply of the session is still streaming."""
    deadline = time.monotonic() + timeout
    while True:
        results, _ = walk(client, f"{messages_url(session_id)}?limit=200")
        if not any(m["status"] == "streaming" for m in results):
            return results
        if time.monotonic() > deadline:
            raise AssertionError(f"a reply is still streaming after {timeout} s")
        time.sleep(0.05)
