from __future__ import annotations

import uuid

import pytest

from tests.api import (
    MESSAGE_KEYS,
    assert_error,
    create_session,
    messages_url,
    send_ok,
    walk,
)

pytestmark = pytest.mark.django_db


def test_messages_of_an_empty_session(api):
    session = create_session(api)
    response = api.get(messages_url(session["id"]))
    assert response.status_code == 200
    assert response.json() == {"total_count": 0, "next": None, "previous": None, "results": []}


def test_messages_come_in_ascending_seq_with_total_count(api):
    session = create_session(api)
    sent = [send_ok(api, session["id"], f"message {i}") for i in range(4)]
    body = api.get(messages_url(session["id"])).json()
    assert body["total_count"] == 4
    assert body["next"] is None
    results = body["results"]
    assert [m["seq"] for m in results] == [1, 2, 3, 4]
    assert [m["id"] for m in results] == [m["id"] for m in sent]
    assert [m["content"] for m in results] == [f"message {i}" for i in range(4)]
    for message in results:
        assert set(message) == MESSAGE_KEYS
        assert message["session"] == session["id"]
        assert message["role"] == "user"
        assert message["reactions"] == []


def test_messages_pagination_walks_every_page_with_no_repeats_and_no_gaps(api):
    session = create_session(api)
    for i in range(23):
        send_ok(api, session["id"], f"m{i}")
    first = api.get(f"{messages_url(session['id'])}?limit=5").json()
    assert first["total_count"] == 23
    assert len(first["results"]) == 5
    results, pages = walk(api, f"{messages_url(session['id'])}?limit=5")
    assert pages == 5
    assert [m["seq"] for m in results] == list(range(1, 24))
    assert [m["content"] for m in results] == [f"m{i}" for i in range(23)]


def test_messages_total_count_is_the_whole_session_on_every_page(api):
    session = create_session(api)
    for i in range(7):
        send_ok(api, session["id"], f"m{i}")
    page = api.get(f"{messages_url(session['id'])}?limit=3").json()
    second = api.get(page["next"]).json()
    assert page["total_count"] == second["total_count"] == 7
    assert [m["seq"] for m in second["results"]] == [4, 5, 6]
    back = api.get(second["previous"]).json()
    assert [m["seq"] for m in back["results"]] == [1, 2, 3]


def test_messages_of_a_missing_session_is_404(api):
    assert_error(api.get(messages_url(str(uuid.uuid4()))), 404, "not_found")


def test_messages_of_another_users_session_is_404_like_a_missing_one(api, other_api):
    theirs = create_session(other_api)
    send_ok(other_api, theirs["id"], "private")
    foreign = api.get(messages_url(theirs["id"]))
    missing = api.get(messages_url(str(uuid.uuid4())))
    assert_error(foreign, 404, "not_found")
    assert foreign.json() == missing.json()
    assert b"private" not in foreign.content


def test_messages_of_a_malformed_session_id_is_404(api):
    assert_error(api.get(messages_url("nope")), 404, "not_found")
    assert_error(api.get(messages_url("12345")), 404, "not_found")


def test_messages_of_several_sessions_are_kept_apart(api):
    a = create_session(api, title="a")
    b = create_session(api, title="b")
    for i in range(3):
        send_ok(api, a["id"], f"a{i}")
        send_ok(api, b["id"], f"b{i}")
    send_ok(api, b["id"], "b3")
    in_a = api.get(messages_url(a["id"])).json()
    in_b = api.get(messages_url(b["id"])).json()
    assert [m["content"] for m in in_a["results"]] == ["a0", "a1", "a2"]
    assert [m["content"] for m in in_b["results"]] == ["b0", "b1", "b2", "b3"]
    assert [m["seq"] for m in in_a["results"]] == [1, 2, 3]
    assert [m["seq"] for m in in_b["results"]] == [1, 2, 3, 4]
    assert {m["session"] for m in in_a["results"]} == {a["id"]}
    assert {m["session"] for m in in_b["results"]} == {b["id"]}
    assert (in_a["total_count"], in_b["total_count"]) == (3, 4)


def test_messages_from_end_starts_at_the_newest_page_and_walks_back_to_the_first(api):
    session = create_session(api)
    for i in range(12):
        send_ok(api, session["id"], f"m{i}")
    newest = api.get(f"{messages_url(session['id'])}?limit=5&from=end").json()
    assert newest["total_count"] == 12
    assert [m["seq"] for m in newest["results"]] == [8, 9, 10, 11, 12]
    assert newest["next"] is None
    seqs = [m["seq"] for m in newest["results"]]
    url = newest["previous"]
    while url:
        page = api.get(url).json()
        seqs = [m["seq"] for m in page["results"]] + seqs
        url = page["previous"]
    assert seqs == list(range(1, 13))


def test_messages_from_end_of_a_short_session_is_the_whole_session(api):
    session = create_session(api)
    for i in range(3):
        send_ok(api, session["id"], f"m{i}")
    body = api.get(f"{messages_url(session['id'])}?from=end").json()
    assert [m["seq"] for m in body["results"]] == [1, 2, 3]
    assert body["next"] is None and body["previous"] is None


def test_messages_from_must_be_start_or_end(api):
    session = create_session(api)
    body = assert_error(api.get(f"{messages_url(session['id'])}?from=middle"), 400, "validation_error")
    assert "from" in body["fields"]


@pytest.mark.parametrize("position", ["abc", "1e99x", "-", "2026-13-45"])
def test_a_tampered_cursor_is_a_validation_error_not_a_crash(api, position):
    import base64

    session = create_session(api)
    send_ok(api, session["id"], "hello")
    cursor = base64.b64encode(f"p={position}".encode()).decode()
    for url in (f"{messages_url(session['id'])}?cursor={cursor}", f"/api/v1/sessions/?cursor={cursor}"):
        body = assert_error(api.get(url), 400, "validation_error")
        assert "cursor" in body["fields"]
    body = assert_error(api.get(f"{messages_url(session['id'])}?cursor=%%%not-base64"), 400, "validation_error")
    assert "cursor" in body["fields"]
