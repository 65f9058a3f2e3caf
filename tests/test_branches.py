"""Versions and branches: a regenerated reply, an edited message, switching between them (REST and sockets)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat.exports import session_export_json, session_export_markdown
from chat.models import Agent, Message
from sessions_app.models import ChatSession
from sessions_app.services import session_create
from tests.api import MESSAGES, SESSIONS, messages_url
from tests.fake_openai import TEXT, FakeOpenAI
from tests.ws import db, frames_until, next_frame, open_socket, send

pytestmark = pytest.mark.django_db(transaction=True)


def rest(client: Any, method: str, url: str, body: Any = None) -> Any:
    return database_sync_to_async(lambda: getattr(client, method)(url, body, format="json") if body is not None else getattr(client, method)(url))()


async def turn(comm: Any, content: str, **extra: Any) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Send a user message and wait for its reply's end: (user message, reply as completed, every frame seen)."""
    client_id = str(uuid.uuid4())
    await send(comm, {"type": "user_message", "content": content, "client_id": client_id, **extra})
    frames = await frames_until(comm, "message.created", where=lambda f: f["message"]["client_id"] == client_id)
    user_message = frames[-1]["message"]
    created = await frames_until(comm, "message.created", where=lambda f: f["message"]["reply_to"] == user_message["id"])
    reply_id = created[-1]["message"]["id"]
    done = await frames_until(comm, "message.completed", where=lambda f: f["message"]["id"] == reply_id and f["message"]["status"] != "streaming")
    return user_message, done[-1]["message"], frames + created + done


async def page(api: Any, session_id: Any, query: str = "") -> dict[str, Any]:
    response = await rest(api, "get", f"{messages_url(session_id)}?limit=200{query}")
    assert response.status_code == 200, response.content
    return response.json()


def ids(body: dict[str, Any]) -> list[str]:
    return [m["id"] for m in body["results"]]


async def test_an_edit_branches_the_conversation_and_history_follows_the_active_branch(user, token, api):  # type: ignore[no-untyped-def]
    session = await db(session_create, owner=user, title="Branches")
    comm = await open_socket(session.pk, token=token)
    other_tab = await open_socket(session.pk, token=token)
    await next_frame(comm)
    assert (await next_frame(other_tab))["session"]["leaf"] is None
    u1, r1, _ = await turn(comm, "first question")
    u2, r2, _ = await turn(comm, "second question")
    u2e, r2e, frames = await turn(comm, "second question, edited", edit_of=u2["id"])

    # The edit is a new version of u2, under the same parent; the reply answers the edited text.
    assert u2e["parent"] == u2["parent"] == r1["id"] and u2e["versions"] == [u2["id"], u2e["id"]]
    assert r2e["parent"] == u2e["id"] and r2e["reply_to"] == u2e["id"] and r2e["status"] == "complete"
    assert '"second question, edited"' in r2e["content"]
    switched = [f for f in frames if f["type"] == "branch.switched"]
    assert switched == [{"type": "branch.switched", "session": str(session.pk), "leaf": r2e["id"]}]
    seen = await frames_until(other_tab, "message.completed", where=lambda f: f["message"]["id"] == r2e["id"] and f["message"]["status"] == "complete")
    assert any(f["type"] == "branch.switched" and f["leaf"] == r2e["id"] for f in seen), "every tab hears of the new branch"

    # History follows the active branch; the other one is kept and readable by its leaf; the tree has all.
    active = await page(api, session.pk)
    assert ids(active) == [u1["id"], r1["id"], u2e["id"], r2e["id"]] and active["total_count"] == 4
    assert [m["versions"] for m in active["results"]] == [[u1["id"]], [r1["id"]], [u2["id"], u2e["id"]], [r2e["id"]]]
    old = await page(api, session.pk, f"&leaf={r2['id']}")
    assert ids(old) == [u1["id"], r1["id"], u2["id"], r2["id"]] and old["total_count"] == 4
    assert old["results"][2]["content"] == "second question" and old["results"][3]["content"] == r2["content"]
    tree = await page(api, session.pk, "&tree=true")
    assert [m["seq"] for m in tree["results"]] == [1, 2, 3, 4, 5, 6] and tree["total_count"] == 6
    assert ids(tree) == [u1["id"], r1["id"], u2["id"], r2["id"], u2e["id"], r2e["id"]]
    detail = (await rest(api, "get", f"{SESSIONS}{session.pk}/")).json()
    assert detail["leaf"] == r2e["id"] and detail["message_count"] == 6
    assert await db(Message.objects.filter(session=session).count) == 6  # nothing deleted, nothing written twice

    # Editing the first message starts a new first message: a branch with nothing before it.
    u1e, r1e, _ = await turn(comm, "a new start", edit_of=u1["id"])
    assert u1e["parent"] is None and u1e["versions"] == [u1["id"], u1e["id"]]
    assert ids(await page(api, session.pk)) == [u1e["id"], r1e["id"]]
    assert ids(await page(api, session.pk, f"&leaf={r2e['id']}")) == [u1["id"], r1["id"], u2e["id"], r2e["id"]]
    await comm.disconnect()
    await other_tab.disconnect()


async def test_a_regenerated_reply_keeps_the_old_one_and_switching_versions_switches_branches(user, token, api):  # type: ignore[no-untyped-def]
    session = await db(session_create, owner=user, title="Versions")
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    u1, r1, _ = await turn(comm, "question one")
    u2, r2, _ = await turn(comm, "question two")

    response = await rest(api, "post", f"{MESSAGES}{r1['id']}/regenerate/", {})
    assert response.status_code == 201, response.content
    r1b = response.json()
    assert (r1b["role"], r1b["status"], r1b["parent"], r1b["reply_to"]) == ("assistant", "streaming", u1["id"], u1["id"])
    assert r1b["versions"] == [r1["id"], r1b["id"]] and r1b["seq"] == 5
    done = await frames_until(comm, "message.completed", where=lambda f: f["message"]["id"] == r1b["id"])
    assert any(f["type"] == "branch.switched" and f["leaf"] == r1b["id"] for f in done)
    assert done[-1]["message"]["status"] == "complete" and '"question one"' in done[-1]["message"]["content"]
    assert done[-1]["message"]["versions"] == [r1["id"], r1b["id"]]
    kept = await db(Message.objects.get, pk=r1["id"])
    assert (kept.content, kept.status) == (r1["content"], "complete")
    assert ids(await page(api, session.pk)) == [u1["id"], r1b["id"]]

    # Version 1 of the reply: its branch, to the newest message under it.
    response = await rest(api, "post", f"{SESSIONS}{session.pk}/switch/", {"message": r1["id"]})
    assert response.status_code == 200, response.content
    assert response.json()["leaf"] == r2["id"]
    assert (await frames_until(comm, "branch.switched"))[-1]["leaf"] == r2["id"]
    assert ids(await page(api, session.pk)) == [u1["id"], r1["id"], u2["id"], r2["id"]]
    # The conversation goes on from there, on that branch.
    u3, r3, _ = await turn(comm, "question three")
    assert u3["parent"] == r2["id"]
    assert ids(await page(api, session.pk)) == [u1["id"], r1["id"], u2["id"], r2["id"], u3["id"], r3["id"]]
    # Back to version 2 (over the socket this time).
    await send(comm, {"type": "switch_branch", "message_id": r1b["id"]})
    assert (await frames_until(comm, "branch.switched"))[-1]["leaf"] == r1b["id"]
    body = await page(api, session.pk)
    assert ids(body) == [u1["id"], r1b["id"]] and body["total_count"] == 2
    assert body["results"][1]["versions"] == [r1["id"], r1b["id"]]
    await comm.disconnect()
    ready = await open_socket(session.pk, token=token)
    assert (await next_frame(ready))["session"]["leaf"] == r1b["id"]
    await ready.disconnect()


async def test_the_model_sees_the_active_branch_only(user, token):  # type: ignore[no-untyped-def]
    with FakeOpenAI() as fake:
        await db(Agent.objects.create, slug="gpt", name="GPT", provider=Agent.Provider.OPENAI, base_url=fake.url + "/v1", model="text")
        session = await db(session_create, owner=user, mode="direct", agent="gpt")
        comm = await open_socket(session.pk, token=token)
        await next_frame(comm)
        await turn(comm, "alpha")
        beta, beta_reply, _ = await turn(comm, "beta")
        gamma, gamma_reply, _ = await turn(comm, "gamma", edit_of=beta["id"])
        await send(comm, {"type": "regenerate", "message_id": gamma_reply["id"]})
        await frames_until(comm, "message.completed", where=lambda f: f["message"]["reply_to"] == gamma["id"] and f["message"]["id"] != gamma_reply["id"])
        await send(comm, {"type": "switch_branch", "message_id": beta_reply["id"]})
        await frames_until(comm, "branch.switched")
        await turn(comm, "delta")
        asked = [[(m["role"], m["content"]) for m in r["body"]["messages"]] for r in fake.requests]
        await comm.disconnect()
    assistant = ("assistant", TEXT)
    assert asked == [
        [("user", "alpha")],
        [("user", "alpha"), assistant, ("user", "beta")],
        [("user", "alpha"), assistant, ("user", "gamma")],  # the edit: beta is on the other branch
        [("user", "alpha"), assistant, ("user", "gamma")],  # the regenerated reply: the same question again
        [("user", "alpha"), assistant, ("user", "beta"), assistant, ("user", "delta")],  # back on beta's branch
    ]


async def test_versions_wait_for_the_running_turn_and_bad_requests_change_nothing(user, other_user, token, api, other_api):  # type: ignore[no-untyped-def]
    session = await db(session_create, owner=user)
    other = await db(session_create, owner=other_user)
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    u1, r1, _ = await turn(comm, "hello")
    mine_elsewhere = await db(session_create, owner=user)
    before = await page(api, session.pk, "&tree=true")

    await send(comm, {"type": "user_message", "content": "/slow 40"})
    running = (await frames_until(comm, "message.delta"))[-1]["message_id"]
    busy = [
        await rest(api, "post", f"{MESSAGES}{r1['id']}/regenerate/", {}),
        await rest(api, "post", f"{SESSIONS}{session.pk}/switch/", {"message": r1["id"]}),
    ]
    assert [(r.status_code, r.json()["code"]) for r in busy] == [(409, "busy"), (409, "busy")]
    await send(comm, {"type": "regenerate", "message_id": r1["id"], "request_id": "again"})
    error = (await frames_until(comm, "error"))[-1]
    assert (error["code"], error["request_id"]) == ("busy", "again")
    # An edit moves the branch: it waits for the running reply even when it asks for no reply.
    response = await rest(api, "post", MESSAGES, {"session": str(session.pk), "content": "x", "reply": False, "edit_of": u1["id"]})
    assert (response.status_code, response.json()["code"]) == (409, "busy")
    await send(comm, {"type": "cancel"})
    await frames_until(comm, "message.completed", where=lambda f: f["message"]["id"] == running)

    cases = [
        (api, "post", f"{MESSAGES}{u1['id']}/regenerate/", {}, 400, "validation_error"),  # a user message
        (api, "post", f"{MESSAGES}{uuid.uuid4()}/regenerate/", {}, 404, "not_found"),
        (api, "post", f"{MESSAGES}not-a-uuid/regenerate/", {}, 404, "not_found"),
        (other_api, "post", f"{MESSAGES}{r1['id']}/regenerate/", {}, 404, "not_found"),  # another user's: as missing
        (api, "post", f"{SESSIONS}{session.pk}/switch/", {}, 400, "validation_error"),
        (api, "post", f"{SESSIONS}{session.pk}/switch/", {"message": 7}, 400, "validation_error"),
        (api, "post", f"{SESSIONS}{session.pk}/switch/", {"message": str(uuid.uuid4())}, 404, "not_found"),
        (other_api, "post", f"{SESSIONS}{session.pk}/switch/", {"message": r1["id"]}, 404, "not_found"),
        (api, "post", f"{SESSIONS}{other.pk}/switch/", {"message": r1["id"]}, 404, "not_found"),
        (api, "post", f"{SESSIONS}{mine_elsewhere.pk}/switch/", {"message": r1["id"]}, 404, "not_found"),  # not of that session
        (api, "post", MESSAGES, {"session": str(session.pk), "content": "x", "edit_of": r1["id"]}, 400, "validation_error"),
        (api, "post", MESSAGES, {"session": str(session.pk), "content": "x", "edit_of": "nope"}, 400, "validation_error"),
        (api, "post", MESSAGES, {"session": str(mine_elsewhere.pk), "content": "x", "edit_of": u1["id"]}, 404, "not_found"),
        (other_api, "post", MESSAGES, {"session": str(other.pk), "content": "x", "edit_of": u1["id"]}, 404, "not_found"),
        (api, "post", MESSAGES, {"session": str(session.pk), "content": "x", "on_busy": "later"}, 400, "validation_error"),
        (api, "get", f"{messages_url(session.pk)}?leaf={uuid.uuid4()}", None, 404, "not_found"),
        (api, "get", f"{messages_url(session.pk)}?leaf=zzz", None, 404, "not_found"),
        (other_api, "get", f"{messages_url(session.pk)}?leaf={r1['id']}", None, 404, "not_found"),
        (api, "get", f"{messages_url(session.pk)}?leaf={r1['id']}&tree=true", None, 400, "validation_error"),
        (api, "get", f"{messages_url(session.pk)}?tree=maybe", None, 400, "validation_error"),
    ]
    for client, method, url, body, status, code in cases:
        response = await rest(client, method, url, body)
        assert (response.status_code, response.json()["code"]) == (status, code), (url, body, response.content)
    for frame, code in [
        ({"type": "regenerate"}, "validation_error"),
        ({"type": "regenerate", "message_id": 5}, "validation_error"),
        ({"type": "regenerate", "message_id": str(uuid.uuid4())}, "not_found"),
        ({"type": "switch_branch", "message_id": "x"}, "validation_error"),
        ({"type": "switch_branch", "message_id": str(uuid.uuid4())}, "not_found"),
        ({"type": "user_message", "content": "x", "edit_of": str(uuid.uuid4())}, "not_found"),
        ({"type": "user_message", "content": "x", "on_busy": 3}, "validation_error"),
    ]:
        await send(comm, {**frame, "request_id": "bad"})
        error = (await frames_until(comm, "error"))[-1]
        assert (error["code"], error["request_id"]) == (code, "bad"), frame
    await send(comm, {"type": "ping"})
    assert (await frames_until(comm, "pong"))[-1] == {"type": "pong"}
    # Exactly the /slow turn was added by all of that: its user message and its stopped reply.
    after = await page(api, session.pk, "&tree=true")
    added = [m for m in after["results"] if m["id"] not in set(ids(before))]
    assert [(m["role"], m["status"]) for m in added] == [("user", "complete"), ("assistant", "cancelled")] and added[1]["id"] == running
    assert after["total_count"] == before["total_count"] + 2
    await comm.disconnect()


async def test_a_session_that_forked_reads_a_page_with_the_same_few_queries_at_any_length(user, api):  # type: ignore[no-untyped-def]
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def fill(count: int) -> ChatSession:
        session = session_create(owner=user)
        first = None
        for i in range(count):
            response = api.post(MESSAGES, {"session": str(session.pk), "content": f"m{i}", "reply": False}, format="json")
            assert response.status_code == 201
            first = first or response.json()
        # Three versions of the first message, then back to the long branch.
        for text in ("v2", "v3"):
            assert api.post(MESSAGES, {"session": str(session.pk), "content": text, "reply": False, "edit_of": first["id"]}, format="json").status_code == 201
        assert api.post(f"{SESSIONS}{session.pk}/switch/", {"message": first["id"]}, format="json").status_code == 200
        return session

    def measure(session: ChatSession) -> tuple[int, dict[str, Any]]:
        with CaptureQueriesContext(connection) as ctx:
            response = api.get(f"{messages_url(session.pk)}?limit=200&from=end")
        assert response.status_code == 200
        assert not [q["sql"] for q in ctx.captured_queries if "COUNT(" in q["sql"].upper()]
        return len(ctx.captured_queries), response.json()

    small, big = await db(fill, 5), await db(fill, 300)
    (few, small_body), (many, big_body) = await db(measure, small), await db(measure, big)
    assert small_body["total_count"] == 5 and big_body["total_count"] == 300 and len(big_body["results"]) == 200
    assert [m["content"] for m in big_body["results"]][-1] == "m299"
    assert len(small_body["results"][0]["versions"]) == 3 and small_body["results"][0]["content"] == "m0"
    assert few == many <= 7, (few, many)  # auth, session, leaf, branches, page, reactions, versions


async def test_exports_follow_the_active_branch_and_can_hold_every_branch(user, token):  # type: ignore[no-untyped-def]
    session = await db(session_create, owner=user, title="Exported")
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    u1, r1, _ = await turn(comm, "original words")
    u1e, r1e, _ = await turn(comm, "edited words", edit_of=u1["id"])
    await comm.disconnect()
    loaded = await db(ChatSession.objects.get, pk=session.pk)
    active = json.loads(await db(session_export_json, [loaded]))[0]
    assert [m["id"] for m in active["messages"]] == [u1e["id"], r1e["id"]] and active["leaf"] == r1e["id"]
    every = json.loads(await db(session_export_json, [loaded], every_branch=True))[0]
    assert [m["id"] for m in every["messages"]] == [u1["id"], r1["id"], u1e["id"], r1e["id"]]
    assert every["messages"][2]["versions"] == [u1["id"], u1e["id"]] and every["messages"][1]["parent"] == u1["id"]
    markdown = await db(session_export_markdown, [loaded])
    assert "edited words" in markdown and "original words" not in markdown and "version 2 of 2" in markdown


async def test_tens_of_sockets_regenerating_at_once_make_one_version(user, token, api):  # type: ignore[no-untyped-def]
    """Twenty tabs press regenerate at the same moment: one new version streams, the others are told the turn runs."""
    session = await db(session_create, owner=user)
    first = await open_socket(session.pk, token=token)
    await next_frame(first)
    _, reply, _ = await turn(first, "/slow 100")  # a new version streams for a while: long enough for every tab to ask
    tabs = [await open_socket(session.pk, token=token) for _ in range(20)]
    for tab in tabs:
        await next_frame(tab)
    await asyncio.gather(*(send(tab, {"type": "regenerate", "message_id": reply["id"], "request_id": i}) for i, tab in enumerate(tabs)))

    async def outcome(tab: Any) -> str:
        frames = await frames_until(tab, "message.completed", where=lambda f: f["message"]["reply_to"] == reply["reply_to"] and f["message"]["id"] != reply["id"], timeout=30)
        return "busy" if any(f["type"] == "error" and f["code"] == "busy" for f in frames) else "ok"

    outcomes = await asyncio.gather(*(outcome(tab) for tab in tabs))
    versions = await db(lambda: list(Message.objects.filter(session=session, parent_id=reply["parent"]).values_list("status", flat=True)))
    assert sorted(versions) == ["complete", "complete"], versions  # the first reply and exactly one new version
    assert outcomes.count("ok") == 1 and outcomes.count("busy") == 19
    for tab in [first, *tabs]:
        await tab.disconnect()


async def test_a_regenerated_reply_counts_as_a_turn_of_the_minute(user, token, api, settings):  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "TURNS_PER_MINUTE": 2}
    session = await db(session_create, owner=user)
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    _, reply, _ = await turn(comm, "one")
    response = await rest(api, "post", f"{MESSAGES}{reply['id']}/regenerate/", {})
    assert response.status_code == 201
    await frames_until(comm, "message.completed", where=lambda f: f["message"]["id"] == response.json()["id"])
    response = await rest(api, "post", f"{MESSAGES}{reply['id']}/regenerate/", {})
    assert (response.status_code, response.json()["code"]) == (429, "rate_limited")
    assert await db(Message.objects.filter(session=session).count) == 3
    await comm.disconnect()


async def test_messages_an_earlier_release_wrote_during_a_deployment_are_linked_before_the_first_fork(user, token, api):  # type: ignore[no-untyped-def]
    """While a deployment migrates, processes of the release before keep serving: their messages have no parent."""
    session = await db(session_create, owner=user)
    comm = await open_socket(session.pk, token=token)
    await next_frame(comm)
    u1, r1, _ = await turn(comm, "before the deployment")

    def written_by_the_earlier_release() -> list[Message]:
        # As its code inserts them: no parent, line or depth (the database's defaults), seq and count bumped.
        added = []
        for seq, role, text in ((3, "user", "during it"), (4, "assistant", "an answer during it")):
            added.append(Message.objects.create(session=session, seq=seq, role=role, content=text))
        ChatSession.objects.filter(pk=session.pk).update(seq=4, message_count=4)
        return added

    during, answer = await db(written_by_the_earlier_release)
    u3, r3, _ = await turn(comm, "after it")
    u2e, r2e, _ = await turn(comm, "during it, edited", edit_of=str(during.pk))
    assert u2e["parent"] == r1["id"] and u2e["versions"] == [str(during.pk), u2e["id"]]
    assert ids(await page(api, session.pk)) == [u1["id"], r1["id"], u2e["id"], r2e["id"]]
    old = await page(api, session.pk, f"&leaf={r3['id']}")
    assert ids(old) == [u1["id"], r1["id"], str(during.pk), str(answer.pk), u3["id"], r3["id"]] and old["total_count"] == 6
    await comm.disconnect()
