"""Full-text search over the user's own messages: ranked, paginated, snippets, never another user's text."""

from __future__ import annotations

import uuid

import pytest

from tests.api import assert_error, create_session, send
from tests.ws import db, frames_until, next_frame, open_socket, token_for
from tests.ws import send as send_frame

pytestmark = pytest.mark.django_db(transaction=True)
SEARCH = "/api/v1/search/"


def found(client, q: str, **params) -> list[dict]:  # type: ignore[no-untyped-def]
    response = client.get(SEARCH, {"q": q, **params})
    assert response.status_code == 200, response.content
    return response.json()["results"]


def marked(hit: dict) -> list[str]:
    return [hit["snippet"][start:end].lower() for start, end in hit["highlights"]]


def test_search_finds_the_users_own_messages_across_sessions_best_first(api, other_api):  # type: ignore[no-untyped-def]
    trips, notes = create_session(api, title="Trips"), create_session(api, title="Notes")
    ids = {}
    brown, foxes = "The quick brown fox jumps over the lazy dog near the river", "Foxes are quick; a fox is quicker than a dog, fox after fox"
    for session, text in [
        (trips, brown),
        (notes, foxes),
        (notes, "Nothing to see here"),
        (trips, "Only the word quick, nothing else"),
    ]:
        ids[text] = send(api, session["id"], text).json()["id"]
    theirs = create_session(other_api)
    send(other_api, theirs["id"], "A quick fox of someone else's, secret")

    hits = found(api, "Quick FOX")
    # Every word is required (each a prefix: "fox" finds "foxes"), and another user's text is never found.
    assert {h["message"]["id"] for h in hits} == {ids[brown], ids[foxes]}
    assert hits[0]["message"]["id"] == ids[foxes]  # more of the words: ranked first
    assert hits[0]["rank"] >= hits[1]["rank"]
    best = hits[0]
    assert best["session"] == {"id": notes["id"], "title": "Notes"} and best["message"]["session"] == notes["id"]
    assert best["message"]["role"] == "user" and best["message"]["seq"] == 1
    assert "secret" not in str(hits)
    assert marked(best) and all(m.startswith(("quick", "fox")) for m in marked(best))
    assert found(other_api, "secret")[0]["session"]["id"] == theirs["id"]
    assert found(api, "secret") == []


def test_words_of_any_script_are_found(api):  # type: ignore[no-untyped-def]
    session = create_session(api)
    message = send(api, session["id"], "καλημέρα κόσμε, こんにちは and привет мир").json()["id"]
    for q in ("καλημέρα", "привет", "мир привет"):
        assert [h["message"]["id"] for h in found(api, q)] == [message], q


def test_addresses_numbers_and_paths_are_words_on_both_databases(api):  # type: ignore[no-untyped-def]
    session = create_session(api)
    message = send(api, session["id"], "Mail ops@example.com, see https://docs.example.org/a/b.html, pi is 3.14, edit /etc/hosts").json()["id"]
    for q in ("example.com", "example", "com", "ops", "docs example", "3.14", "14", "etc hosts", "/etc/hosts", "html"):
        assert [h["message"]["id"] for h in found(api, q)] == [message], q


def test_a_message_whose_text_changes_is_found_by_its_new_text_only(api):  # type: ignore[no-untyped-def]
    from chat.models import Message

    session = create_session(api)
    message = send(api, session["id"], "the first wording: aardvark").json()["id"]
    assert len(found(api, "aardvark")) == 1
    # As when an interrupted reply gets its fuller text, or a status is written again with the same value.
    Message.objects.filter(pk=message).update(content="the second wording: pangolin")
    Message.objects.filter(pk=message).update(status="complete")
    assert found(api, "aardvark") == []
    assert [h["message"]["id"] for h in found(api, "pangolin")] == [message]
    Message.objects.filter(pk=message).update(type="event")  # no longer a text message: out of the index
    assert found(api, "pangolin") == []


async def test_a_reply_is_found_once_it_ended_not_while_it_streams(user, api, settings):  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "DEMO_SLOW_DELAY": 0.05, "CHECKPOINT_INTERVAL": 0.2}
    session = await db(create_session, api)
    comm = await open_socket(session["id"], token=await db(token_for, user))
    await next_frame(comm)
    await send_frame(comm, {"type": "user_message", "content": "/slow 30", "client_id": str(uuid.uuid4())})
    await frames_until(comm, "message.delta", where=lambda f: f["offset"] > 40)
    # Checkpoints have saved some of its text by now; a streaming reply is not in the index.
    assert await db(found, api, "chunk") == []
    completed = (await frames_until(comm, "message.completed", where=lambda f: f["message"]["role"] == "assistant"))[-1]
    await comm.disconnect()
    hits = await db(found, api, "chunk")
    assert [(h["message"]["id"], h["message"]["role"]) for h in hits] == [(completed["message"]["id"], "assistant")]


def test_a_deleted_session_is_no_longer_found(api):  # type: ignore[no-untyped-def]
    keep, gone = create_session(api), create_session(api)
    send(api, keep["id"], "zebra crossing")
    send(api, gone["id"], "zebra stripes")
    assert len(found(api, "zebra")) == 2
    assert api.delete(f"/api/v1/sessions/{gone['id']}/").status_code == 204
    assert [h["session"]["id"] for h in found(api, "zebra")] == [keep["id"]]


def test_results_come_in_pages(api):  # type: ignore[no-untyped-def]
    session = create_session(api)
    for i in range(25):
        send(api, session["id"], f"walrus number {i}")
    first = api.get(SEARCH, {"q": "walrus", "limit": 10}).json()
    assert len(first["results"]) == 10 and first["previous"] is None and first["next"]
    second = api.get(first["next"]).json()
    third = api.get(second["next"]).json()
    assert len(second["results"]) == 10 and len(third["results"]) == 5 and third["next"] is None
    seen = [h["message"]["id"] for page in (first, second, third) for h in page["results"]]
    assert len(set(seen)) == 25
    assert api.get(third["previous"]).json()["results"] == second["results"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "q"), ({"q": ""}, "q"), ({"q": "   "}, "q"), ({"q": "!!! ??? ..."}, "q"), ({"q": "x" * 501}, "q"),
        ({"q": " ".join(f"w{i}" for i in range(11))}, "q"), ({"q": ["a", "b"]}, "q"),
        ({"q": "fox", "limit": "0"}, "limit"), ({"q": "fox", "limit": "51"}, "limit"), ({"q": "fox", "limit": "ten"}, "limit"),
        ({"q": "fox", "offset": "1001"}, "offset"), ({"q": "fox", "offset": "-1"}, "offset"),
    ],
)
def test_bad_searches_are_a_clear_400(api, params, field):  # type: ignore[no-untyped-def]
    body = assert_error(api.get(SEARCH, params), 400, "validation_error")
    assert field in body["fields"]


@pytest.mark.parametrize("q", ['fox" OR "dog', "fox:* | dog", "NEAR(fox dog)", "fox*", "-fox", "fox & !dog", "') OR 1=1 --", "\\x00fox"])
def test_query_syntax_of_the_engines_cannot_be_injected(api, q):  # type: ignore[no-untyped-def]
    session = create_session(api)
    fox = send(api, session["id"], "fox and dog together").json()["id"]
    send(api, session["id"], "only a dog")
    # Every word of the query is required, whatever punctuation surrounds it.
    hits = found(api, q)
    assert [h["message"]["id"] for h in hits] in ([fox], [])


def test_search_needs_credentials(client):  # type: ignore[no-untyped-def]
    assert client.get(SEARCH, {"q": "fox"}).status_code in (401, 403)


def test_searches_are_throttled_per_user(api, other_api, settings):  # type: ignore[no-untyped-def]
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "search": "3/min"}}
    assert [api.get(SEARCH, {"q": "fox"}).status_code for _ in range(3)] == [200, 200, 200]
    body = assert_error(api.get(SEARCH, {"q": "fox"}), 429, "throttled")
    assert body["retry_after"] > 0
    assert other_api.get(SEARCH, {"q": "fox"}).status_code == 200  # per user
