from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from chat.models import Agent, Message, Reaction
from sessions_app.models import ChatSession
from tests.api import (
    SESSION_KEYS,
    SESSIONS,
    assert_error,
    create_session,
    reactions_url,
    send_ok,
    session_url,
    walk,
)

pytestmark = pytest.mark.django_db


# Create -----------------------------------------------------------------------


def test_create_session_returns_201_with_exactly_the_session_shape(api):
    response = api.post(SESSIONS, {"title": "Trip plans", "mode": "direct", "agent": "assistant"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == SESSION_KEYS
    uuid.UUID(body["id"])
    assert body["title"] == "Trip plans"
    assert body["mode"] == "direct"
    assert body["agent"] == "assistant"
    assert body["message_count"] == 0
    assert body["created_at"] and body["updated_at"]
    assert ChatSession.objects.filter(pk=body["id"], owner__username="alice").exists()


def test_create_session_with_empty_body_succeeds(api):
    body = create_session(api)
    assert body["title"] == ""
    assert body["agent"] is None


def test_create_session_unauthenticated_is_401_with_code_and_detail(db):
    response = APIClient().post(SESSIONS, {"title": "x"}, format="json")
    assert_error(response, 401, "not_authenticated")
    assert not ChatSession.objects.exists()


def test_create_session_with_a_bad_token_is_401(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert_error(client.get(SESSIONS), 401, "authentication_failed")


def test_create_direct_session_with_unknown_agent_is_400_agent_not_found(api):
    response = api.post(SESSIONS, {"mode": "direct", "agent": "no-such-agent"}, format="json")
    assert_error(response, 400, "agent_not_found")
    assert not ChatSession.objects.exists()


def test_create_direct_session_with_inactive_agent_is_400_agent_not_found(api):
    Agent.objects.filter(slug="coder").update(is_active=False)
    response = api.post(SESSIONS, {"mode": "direct", "agent": "coder"}, format="json")
    assert_error(response, 400, "agent_not_found")


def test_create_direct_session_without_agent_is_400_agent_not_found(api):
    assert_error(api.post(SESSIONS, {"mode": "direct"}, format="json"), 400, "agent_not_found")
    assert_error(api.post(SESSIONS, {"mode": "direct", "agent": None}, format="json"), 400, "agent_not_found")
    assert not ChatSession.objects.exists()


def test_create_session_mode_defaults_to_orchestrated(api):
    assert create_session(api, title="t")["mode"] == "orchestrated"


def test_create_session_with_bad_mode_is_400_validation_error_with_field_messages(api):
    body = assert_error(api.post(SESSIONS, {"mode": "chaotic"}, format="json"), 400, "validation_error")
    assert set(body["fields"]) == {"mode"}
    assert isinstance(body["fields"]["mode"], list) and body["fields"]["mode"][0]
    assert not ChatSession.objects.exists()


def test_create_session_with_too_long_title_is_400(api, settings):
    title = "x" * (settings.CHAT["MAX_TITLE_CHARS"] + 1)
    body = assert_error(api.post(SESSIONS, {"title": title}, format="json"), 400, "validation_error")
    assert "title" in body["fields"]
    assert not ChatSession.objects.exists()


def test_create_session_title_of_wrong_type_is_400(api):
    body = assert_error(api.post(SESSIONS, {"title": {"a": 1}}, format="json"), 400, "validation_error")
    assert "title" in body["fields"]


# List -------------------------------------------------------------------------


def test_list_sessions_when_there_are_none(api):
    response = api.get(SESSIONS)
    assert response.status_code == 200
    assert response.json() == {"next": None, "previous": None, "results": []}


def test_list_sessions_shows_each_session_with_its_message_count(api):
    busy = create_session(api, title="busy")
    quiet = create_session(api, title="quiet")
    for i in range(3):
        send_ok(api, busy["id"], f"m{i}")
    results = api.get(SESSIONS).json()["results"]
    by_id = {s["id"]: s for s in results}
    assert set(by_id) == {busy["id"], quiet["id"]}
    assert all(set(s) == SESSION_KEYS for s in results)
    assert by_id[busy["id"]]["message_count"] == 3
    assert by_id[quiet["id"]]["message_count"] == 0


def test_list_sessions_newest_activity_first(api):
    first = create_session(api, title="first")
    second = create_session(api, title="second")
    third = create_session(api, title="third")
    ids = [s["id"] for s in api.get(SESSIONS).json()["results"]]
    assert ids == [third["id"], second["id"], first["id"]]

    send_ok(api, first["id"])  # a new message is activity
    ids = [s["id"] for s in api.get(SESSIONS).json()["results"]]
    assert ids == [first["id"], third["id"], second["id"]]

    assert api.patch(session_url(second["id"]), {"title": "renamed"}, format="json").status_code == 200
    ids = [s["id"] for s in api.get(SESSIONS).json()["results"]]
    assert ids == [second["id"], first["id"], third["id"]]


def test_list_sessions_never_shows_another_users_sessions(api, other_api):
    mine = create_session(api, title="alice's")
    theirs = create_session(other_api, title="bob's")
    assert [s["id"] for s in api.get(SESSIONS).json()["results"]] == [mine["id"]]
    assert [s["id"] for s in other_api.get(SESSIONS).json()["results"]] == [theirs["id"]]


def test_list_sessions_cursor_pagination_walks_every_page_without_repeats_or_gaps(api):
    created = [create_session(api, title=f"s{i}")["id"] for i in range(12)]
    results, pages = walk(api, f"{SESSIONS}?limit=5")
    ids = [s["id"] for s in results]
    assert pages == 3
    assert ids == list(reversed(created))


def test_list_sessions_pagination_with_equal_activity_times_has_no_repeats_or_gaps(api, user):
    now = timezone.now()
    sessions = ChatSession.objects.bulk_create([ChatSession(owner=user, title=f"s{i}") for i in range(13)])
    ChatSession.objects.filter(owner=user).update(updated_at=now)
    results, _ = walk(api, f"{SESSIONS}?limit=4")
    ids = [s["id"] for s in results]
    assert len(ids) == len(set(ids)) == 13
    assert set(ids) == {str(s.pk) for s in sessions}


def test_list_sessions_previous_link_leads_back_to_the_first_page(api):
    for i in range(7):
        create_session(api, title=f"s{i}")
    first = api.get(f"{SESSIONS}?limit=3").json()
    second = api.get(first["next"]).json()
    assert second["previous"]
    back = api.get(second["previous"]).json()
    assert [s["id"] for s in back["results"]] == [s["id"] for s in first["results"]]


def test_list_sessions_limit_above_200_is_capped(api, user):
    now = timezone.now()
    ChatSession.objects.bulk_create(
        [ChatSession(owner=user, title=f"s{i}", updated_at=now - timedelta(seconds=i)) for i in range(205)]
    )
    body = api.get(f"{SESSIONS}?limit=1000").json()
    assert len(body["results"]) == 200
    assert body["next"]
    rest = api.get(body["next"]).json()
    assert len(rest["results"]) == 5


# Get / patch / delete -------------------------------------------------------


def test_get_session(api):
    created = create_session(api, title="mine")
    send_ok(api, created["id"])
    response = api.get(session_url(created["id"]))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == SESSION_KEYS
    assert body["id"] == created["id"]
    assert body["title"] == "mine"
    assert body["message_count"] == 1


def test_patch_session_title(api):
    created = create_session(api, title="old")
    response = api.patch(session_url(created["id"]), {"title": "new"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["title"] == "new"
    assert api.get(session_url(created["id"])).json()["title"] == "new"


def test_patch_session_mode_and_agent(api):
    created = create_session(api)
    response = api.patch(session_url(created["id"]), {"mode": "direct", "agent": "coder"}, format="json")
    assert response.status_code == 200, response.content
    assert (response.json()["mode"], response.json()["agent"]) == ("direct", "coder")

    response = api.patch(session_url(created["id"]), {"agent": "researcher"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["agent"] == "researcher"

    response = api.patch(session_url(created["id"]), {"mode": "orchestrated"}, format="json")
    assert response.status_code == 200, response.content
    body = api.get(session_url(created["id"])).json()
    assert (body["mode"], body["agent"]) == ("orchestrated", "researcher")


def test_patch_session_unknown_agent_is_400_agent_not_found_and_nothing_changes(api):
    created = create_session(api, mode="direct", agent="assistant")
    response = api.patch(session_url(created["id"]), {"agent": "no-such-agent"}, format="json")
    assert_error(response, 400, "agent_not_found")
    assert api.get(session_url(created["id"])).json()["agent"] == "assistant"


def test_patch_session_to_direct_mode_without_agent_is_400_agent_not_found(api):
    created = create_session(api)
    assert_error(api.patch(session_url(created["id"]), {"mode": "direct"}, format="json"), 400, "agent_not_found")
    assert api.get(session_url(created["id"])).json()["mode"] == "orchestrated"


def test_patch_session_bad_mode_is_400_validation_error(api):
    created = create_session(api)
    body = assert_error(api.patch(session_url(created["id"]), {"mode": "x"}, format="json"), 400, "validation_error")
    assert "mode" in body["fields"]


def test_patch_another_users_session_is_404_and_nothing_changes(api, other_api):
    theirs = create_session(other_api, title="bob's")
    assert_error(api.patch(session_url(theirs["id"]), {"title": "mine now"}, format="json"), 404, "not_found")
    assert other_api.get(session_url(theirs["id"])).json()["title"] == "bob's"


def test_delete_session_removes_it_with_its_messages_and_reactions(api):
    created = create_session(api)
    message = send_ok(api, created["id"])
    send_ok(api, created["id"], "second")
    assert api.post(reactions_url(message["id"]), {"emoji": "👍"}, format="json").status_code == 201

    response = api.delete(session_url(created["id"]))
    assert response.status_code == 204
    assert not response.content
    assert_error(api.get(session_url(created["id"])), 404, "not_found")
    assert created["id"] not in [s["id"] for s in api.get(SESSIONS).json()["results"]]
    assert not Message.objects.filter(session_id=created["id"]).exists()
    assert not Reaction.objects.filter(message_id=message["id"]).exists()


def test_delete_missing_session_is_404(api):
    assert_error(api.delete(session_url(str(uuid.uuid4()))), 404, "not_found")


def test_delete_another_users_session_is_404_and_it_is_still_there(api, other_api):
    theirs = create_session(other_api, title="bob's")
    send_ok(other_api, theirs["id"])
    assert_error(api.delete(session_url(theirs["id"])), 404, "not_found")
    body = other_api.get(session_url(theirs["id"])).json()
    assert body["title"] == "bob's"
    assert body["message_count"] == 1


def test_get_another_users_session_is_404_exactly_like_a_missing_one(api, other_api):
    theirs = create_session(other_api)
    foreign = api.get(session_url(theirs["id"]))
    missing = api.get(session_url(str(uuid.uuid4())))
    assert_error(foreign, 404, "not_found")
    assert foreign.status_code == missing.status_code
    assert foreign.json() == missing.json()


def test_get_session_with_malformed_id_is_404(api):
    assert_error(api.get(session_url("not-a-uuid")), 404, "not_found")
