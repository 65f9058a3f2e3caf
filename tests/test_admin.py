"""The Django admin: sessions (read-only history, exports), agents (tool validation), read-only lists."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from chat.exports import session_export_json, session_export_markdown
from chat.models import Agent, Approval, Message, Plan, Reaction, ToolCall
from chat.turn import turns
from sessions_app.models import ChatSession

pytestmark = pytest.mark.django_db

SESSIONS_URL = reverse("admin:sessions_app_chatsession_changelist")


def make_session(owner: Any, title: str = "", **fields: Any) -> ChatSession:
    return ChatSession.objects.create(owner=owner, title=title, **fields)


def say(session: ChatSession, user: Any, content: str) -> Message:
    """A user message in the session (written as its owner: only owners send messages)."""
    return turns.turn_start(session_id=session.pk, user=session.owner, content=content, reply=False).user_message


def add_reply(
    session: ChatSession, content: str, *, status: str = Message.Status.COMPLETE, error: str | None = None
) -> Message:
    session.refresh_from_db()
    session.seq += 1
    session.save(update_fields=["seq"])
    return Message.objects.create(
        session=session, seq=session.seq, role=Message.Role.ASSISTANT, content=content, status=status, error=error,
        agent=Agent.objects.get(slug="assistant"),
    )


def add_tool_call(
    session: ChatSession, reply: Message, name: str = "calculator", *, arguments: dict[str, Any] | None = None, **fields: Any
) -> ToolCall:
    return ToolCall.objects.create(
        session=session, reply=reply, name=name, arguments=arguments if arguments is not None else {"expression": "6*7"},
        agent=reply.agent, **fields,
    )


def add_approval(session: ChatSession, call: ToolCall, **fields: Any) -> Approval:
    return Approval.objects.create(session=session, tool_call=call, **fields)


def add_plan(session: ChatSession, reply: Message, steps: list[dict[str, str]] | None = None, **fields: Any) -> Plan:
    steps = steps or [{"agent": "coder", "instruction": "Write the code"}, {"agent": "researcher", "instruction": "Check the facts"}]
    return Plan.objects.create(session=session, reply=reply, steps=steps, **fields)


def add_agentic_rows(session: ChatSession, n: int, decided_by: Any) -> None:
    """n tool calls, each awaiting or past an approval, and n plans, in one reply."""
    reply = add_reply(session, "let me use some tools")
    now = timezone.now()
    for i in range(n):
        call = add_tool_call(
            session, reply, "webhook_post", arguments={"url": f"https://example.com/{i}"}, ordinal=i,
            status=ToolCall.Status.DONE, needs_approval=True, output={"status": 200}, completed_at=now,
        )
        add_approval(session, call, status=Approval.Status.APPROVED, decided_by=decided_by, decided_at=now, comment=f"ok {i}")
        add_plan(session, reply, status=Plan.Status.REJECTED, decided_by=decided_by, decided_at=now, comment=f"no {i}")


def table(page: str, css_class: str) -> str:
    """The HTML of the session page's table with that class."""
    start = page.index(f'<table class="{css_class}">')
    return page[start : page.index("</table>", start)]


def change_url(session: ChatSession) -> str:
    return reverse("admin:sessions_app_chatsession_change", args=[session.pk])


def count_queries(client: Any, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return len(ctx.captured_queries)


# Sessions changelist ------------------------------------------------------------


def test_changelist_shows_sessions_with_message_counts(admin_client, user):
    busy = make_session(user, "Busy session")
    for n in range(3):
        say(busy, user, f"hello {n}")
    make_session(user, "Quiet session")

    response = admin_client.get(SESSIONS_URL)

    assert response.status_code == 200
    rows = {row.title: row.message_count for row in response.context["cl"].result_list}
    assert rows == {"Busy session": 3, "Quiet session": 0}
    assert "Busy session" in response.text and "alice" in response.text


def test_changelist_query_count_does_not_grow_with_sessions(admin_client, user, other_user):
    def add_sessions(n: int) -> None:
        for i in range(n):
            session = make_session(user if i % 2 else other_user, f"session {i}", agent=Agent.objects.get(slug="coder"))
            say(session, user, "hi")

    admin_client.get(SESSIONS_URL)  # warm-up: content types, permissions
    add_sessions(5)
    with_5 = count_queries(admin_client, SESSIONS_URL)
    add_sessions(45)
    with_50 = count_queries(admin_client, SESSIONS_URL)

    assert ChatSession.objects.count() == 50
    assert with_50 == with_5


def test_changelist_search_by_title_owner_and_id(admin_client, user, other_user):
    apples = make_session(user, "About apples")
    pears = make_session(other_user, "About pears")

    def titles(query: str) -> set[str]:
        response = admin_client.get(SESSIONS_URL, {"q": query})
        assert response.status_code == 200
        return {session.title for session in response.context["cl"].result_list}

    assert titles("apples") == {"About apples"}
    assert titles("bob") == {"About pears"}
    assert titles(str(apples.pk)) == {"About apples"}
    assert titles(str(pears.pk)[:8]) == {"About pears"}


def test_changelist_filters_by_mode_and_agent(admin_client, user):
    coder = Agent.objects.get(slug="coder")
    make_session(user, "Orchestrated one")
    make_session(user, "Direct one", mode=ChatSession.Mode.DIRECT, agent=coder)

    by_mode = admin_client.get(SESSIONS_URL, {"mode__exact": "direct"})
    by_agent = admin_client.get(SESSIONS_URL, {"agent__id__exact": coder.pk})

    assert [s.title for s in by_mode.context["cl"].result_list] == ["Direct one"]
    assert [s.title for s in by_agent.context["cl"].result_list] == ["Direct one"]


def test_non_staff_user_is_redirected_to_login(client, user):
    client.force_login(user)

    response = client.get(SESSIONS_URL)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


# Session page -----------------------------------------------------------------


def test_session_page_shows_messages_in_seq_order_with_reactions(admin_client, user, other_user):
    session = make_session(user, "Reactions")
    first = say(session, user, "first question")
    answer = add_reply(session, "first answer")
    say(session, user, "second question")
    failed = add_reply(session, "half an answer", status=Message.Status.FAILED, error="provider timed out")
    Reaction.objects.create(message=answer, user=user, emoji="👍")
    Reaction.objects.create(message=answer, user=other_user, emoji="👍")
    Reaction.objects.create(message=first, user=user, emoji="🎉")

    response = admin_client.get(change_url(session))

    assert response.status_code == 200
    page = response.text
    positions = [page.index(text) for text in ["first question", "first answer", "second question", "half an answer"]]
    assert positions == sorted(positions)
    assert "👍 2" in page and "🎉 1" in page
    assert failed.error in page and "failed" in page
    assert "assistant" in page


def test_session_page_query_count_does_not_grow_with_messages(admin_client, user):
    def session_with(n: int) -> ChatSession:
        session = make_session(user, f"{n} messages")
        for i in range(n):
            Reaction.objects.create(message=add_reply(session, f"answer {i}"), user=user, emoji="👍")
        return session

    small, large = session_with(3), session_with(30)
    admin_client.get(change_url(small))  # warm-up

    assert count_queries(admin_client, change_url(large)) == count_queries(admin_client, change_url(small))


def test_session_page_escapes_message_content(admin_client, user):
    session = make_session(user, "XSS")
    add_reply(session, "<script>alert(1)</script>")

    page = admin_client.get(change_url(session)).text

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_session_page_shows_tool_calls_approvals_and_plans_with_statuses(admin_client, user, other_user):
    session = make_session(user, "Agentic")
    say(session, user, "compute and post")
    reply = add_reply(session, "calling tools")
    now = timezone.now()
    add_tool_call(session, reply, "calculator", status=ToolCall.Status.DONE, output={"result": 42}, completed_at=now)
    add_tool_call(
        session, reply, "current_time", arguments={"tz": "Mars/Olympus"}, ordinal=1, status=ToolCall.Status.FAILED,
        output={"error": "unknown time zone"}, is_error=True, completed_at=now,
    )
    risky = add_tool_call(
        session, reply, "webhook_post", arguments={"url": "https://example.com/hook"}, ordinal=2,
        status=ToolCall.Status.AWAITING_APPROVAL, needs_approval=True,
    )
    add_tool_call(session, reply, "client_time", arguments={}, ordinal=3, status=ToolCall.Status.AWAITING_CLIENT, runs_on="client")
    rejected = add_tool_call(session, reply, "webhook_post", arguments={"url": "https://evil.example"}, ordinal=4, status=ToolCall.Status.REJECTED)
    add_approval(session, risky)
    add_approval(
        session, rejected, status=Approval.Status.REJECTED, comment="not that host", decided_by=other_user, decided_at=now
    )
    add_plan(session, reply, status=Plan.Status.RUNNING, current_step=1, comment="go ahead", decided_by=user, decided_at=now)

    response = admin_client.get(change_url(session))

    assert response.status_code == 200
    calls = table(response.text, "chat-tool-calls")
    for text in ["calculator", "&quot;result&quot;: 42", "current_time", "unknown time zone", "Mars/Olympus", "client_time"]:
        assert text in calls
    for status in ["done", "failed", "awaiting_approval", "awaiting_client", "rejected"]:
        assert f"<td>{status}</td>" in calls
    assert "<td>client</td>" in calls and "<td>yes</td>" in calls
    assert "<td>assistant</td>" in calls  # the agent of the reply that made the calls
    assert calls.index("calculator") < calls.index("current_time") < calls.index("client_time")
    assert calls.count("<strong>Error</strong>") == 1
    approvals = table(response.text, "chat-approvals")
    assert "<td>pending</td>" in approvals and "<td>rejected</td>" in approvals
    assert "https://example.com/hook" in approvals and "https://evil.example" in approvals
    assert "not that host" in approvals and "<td>bob</td>" in approvals
    plans = table(response.text, "chat-plans")
    assert "<td>running</td>" in plans and "<td>1 of 2</td>" in plans
    assert "<b>coder</b>: Write the code" in plans and "<b>researcher</b>: Check the facts" in plans
    assert "go ahead" in plans and "<td>alice</td>" in plans


def test_session_page_says_when_there_are_no_tool_calls_approvals_or_plans(admin_client, user):
    session = make_session(user, "Plain chat")
    say(session, user, "just talking")

    page = admin_client.get(change_url(session)).text

    assert "No tool calls." in page and "No approvals." in page and "No plans." in page


def test_session_page_query_count_does_not_grow_with_tool_calls_approvals_and_plans(admin_client, user, other_user):
    small, large = make_session(user, "two of each"), make_session(user, "twenty of each")
    add_agentic_rows(small, 2, other_user)
    add_agentic_rows(large, 20, other_user)
    admin_client.get(change_url(small))  # warm-up

    with_2 = count_queries(admin_client, change_url(small))
    with_20 = count_queries(admin_client, change_url(large))

    assert ToolCall.objects.filter(session=large).count() == Approval.objects.filter(session=large).count() == 20
    assert Plan.objects.filter(session=large).count() == 20
    assert with_20 == with_2


def test_session_page_escapes_tool_arguments_outputs_and_plans(admin_client, user):
    session = make_session(user, "XSS in tools")
    reply = add_reply(session, "calling")
    call = add_tool_call(
        session, reply, "webhook_post", arguments={"body": "<script>alert(1)</script>"}, status=ToolCall.Status.FAILED,
        output={"error": "<img src=x onerror=alert(2)>"}, is_error=True,
    )
    add_approval(session, call, comment="<b>bold</b>")
    add_plan(session, reply, steps=[{"agent": "<i>coder</i>", "instruction": "<script>alert(3)</script>"}], comment="<u>u</u>")

    page = admin_client.get(change_url(session)).text

    for raw in ["<script>alert(1)</script>", "<img src=x", "<b>bold</b>", "<i>coder</i>", "<script>alert(3)</script>", "<u>u</u>"]:
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in table(page, "chat-tool-calls")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in table(page, "chat-approvals")
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;i&gt;coder&lt;/i&gt;" in page and "&lt;script&gt;alert(3)&lt;/script&gt;" in page


def test_operator_can_rename_a_session_without_touching_its_history(admin_client, user):
    session = make_session(user, "Old title")
    say(session, user, "keep me")
    add_reply(session, "and me")
    before = list(Message.objects.filter(session=session).order_by("seq").values_list("seq", "content", "status"))

    response = admin_client.post(change_url(session), {"title": "New title", "mode": "direct", "seq": "0"})

    assert response.status_code == 302
    session.refresh_from_db()
    assert (session.title, session.mode, session.seq) == ("New title", ChatSession.Mode.ORCHESTRATED, 2)
    after = list(Message.objects.filter(session=session).order_by("seq").values_list("seq", "content", "status"))
    assert after == before


def test_operator_cannot_delete_or_add_sessions(admin_client, user):
    session = make_session(user, "Keep")
    say(session, user, "precious")

    delete_page = admin_client.post(reverse("admin:sessions_app_chatsession_delete", args=[session.pk]), {"post": "yes"})
    add_page = admin_client.get(reverse("admin:sessions_app_chatsession_add"))
    bulk = admin_client.post(SESSIONS_URL, {"action": "delete_selected", "_selected_action": [session.pk], "post": "yes"})

    assert delete_page.status_code == 403
    assert add_page.status_code == 403
    assert bulk.status_code in (200, 302)
    assert Message.objects.filter(session=session).count() == 1


# Exports ----------------------------------------------------------------------


def export(admin_client: Any, action: str, sessions: list[ChatSession]) -> Any:
    response = admin_client.post(SESSIONS_URL, {"action": action, "_selected_action": [s.pk for s in sessions]})
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment;")
    assert response.streaming  # made and sent piece by piece, never whole in memory
    response.body = b"".join(response.streaming_content)
    return response


def test_json_export_downloads_sessions_with_messages_in_order(admin_client, user):
    first = make_session(user, "First")
    question = say(first, user, "question one")
    add_reply(first, "answer one", status=Message.Status.FAILED, error="model exploded")
    Reaction.objects.create(message=question, user=user, emoji="👍")
    second = make_session(user, "Second")
    say(second, user, "question two")

    response = export(admin_client, "download_json", [first, second])

    assert response["Content-Type"].startswith("application/json")
    document = json.loads(response.body)
    assert {s["title"] for s in document} == {"First", "Second"}
    exported = next(s for s in document if s["title"] == "First")
    assert exported["id"] == str(first.pk) and exported["owner"] == "alice"
    assert [m["seq"] for m in exported["messages"]] == [1, 2]
    assert [m["content"] for m in exported["messages"]] == ["question one", "answer one"]
    assert exported["messages"][0]["reactions"] == [{"emoji": "👍", "count": 1, "me": True}]
    assert exported["messages"][1]["status"] == "failed"
    assert exported["messages"][1]["error"] == "model exploded"


def test_json_export_of_one_session_is_still_an_array(admin_client, user):
    session = make_session(user, "Only")
    say(session, user, "hello")

    document = json.loads(export(admin_client, "download_json", [session]).body)

    assert isinstance(document, list) and len(document) == 1
    assert document[0]["message_count"] == 1


def test_json_export_includes_tool_calls_approvals_and_plans(admin_client, user, other_user):
    session = make_session(user, "Agentic export")
    reply = add_reply(session, "calling")
    now = timezone.now()
    done = add_tool_call(session, reply, "calculator", status=ToolCall.Status.DONE, output={"result": 42}, completed_at=now)
    risky = add_tool_call(
        session, reply, "webhook_post", arguments={"url": "https://example.com"}, ordinal=1, status=ToolCall.Status.REJECTED,
        needs_approval=True, output={"error": "rejected", "rejected": True}, is_error=True, completed_at=now,
    )
    approval = add_approval(session, risky, status=Approval.Status.REJECTED, comment="no", decided_by=other_user, decided_at=now)
    plan = add_plan(session, reply, status=Plan.Status.DONE, current_step=2, decided_by=user, decided_at=now)
    quiet = make_session(user, "No tools")
    say(quiet, user, "hello")

    document = json.loads(export(admin_client, "download_json", [session, quiet]).body)

    exported = next(s for s in document if s["title"] == "Agentic export")
    assert [c["id"] for c in exported["tool_calls"]] == [str(done.pk), str(risky.pk)]
    first, second = exported["tool_calls"]
    assert (first["name"], first["arguments"], first["status"], first["output"]) == ("calculator", {"expression": "6*7"}, "done", {"result": 42})
    assert (first["agent"], first["reply"], first["runs_on"], first["is_error"]) == ("assistant", str(reply.pk), "server", False)
    assert first["completed_at"] is not None
    assert (second["status"], second["needs_approval"], second["is_error"]) == ("rejected", True, True)
    assert exported["approvals"] == [
        {
            "id": str(approval.pk), "tool_call": str(risky.pk), "message": None, "tool": "webhook_post",
            "arguments": {"url": "https://example.com"}, "status": "rejected", "comment": "no", "decided_by": "bob",
            "created_at": exported["approvals"][0]["created_at"], "decided_at": exported["approvals"][0]["decided_at"],
        }
    ]
    assert exported["approvals"][0]["decided_at"] is not None
    [exported_plan] = exported["plans"]
    assert exported_plan["id"] == str(plan.pk) and exported_plan["steps"] == plan.steps
    assert (exported_plan["status"], exported_plan["current_step"], exported_plan["decided_by"]) == ("done", 2, "alice")
    other = next(s for s in document if s["title"] == "No tools")
    assert (other["tool_calls"], other["approvals"], other["plans"]) == ([], [], [])


def test_markdown_export_contains_every_message_and_a_section_per_session(admin_client, user, other_user):
    first = make_session(user, "Planning")
    say(first, user, "what should we do")
    reply = add_reply(first, "a line\n# not a heading of the document", status=Message.Status.CANCELLED)
    Reaction.objects.create(message=reply, user=user, emoji="❤️")
    Reaction.objects.create(message=reply, user=other_user, emoji="❤️")
    second = make_session(user, "Review")
    say(second, user, "please review")

    response = export(admin_client, "download_markdown", [first, second])

    assert response["Content-Type"].startswith("text/markdown")
    text = response.body.decode()
    assert "## Planning" in text and "## Review" in text
    for content in ["what should we do", "a line", "# not a heading of the document", "please review"]:
        assert content in text
    assert "\n# not a heading" not in text
    assert "cancelled" in text and "❤️ 2" in text
    assert text.index("what should we do") < text.index("a line")


# Agents -----------------------------------------------------------------------


def agent_form(**overrides: Any) -> dict[str, Any]:
    data = {
        "slug": "helper", "name": "Helper", "description": "", "system_prompt": "Be brief.", "provider": "demo",
        "model": "", "base_url": "", "api_key_env": "", "tools": ["calculator"], "is_active": "on",
    }
    data.update(overrides)
    return data


def test_agent_form_rejects_an_unknown_tool(admin_client):
    response = admin_client.post(
        reverse("admin:chat_agent_add"), agent_form(tools=["calculator", "rm_rf"])
    )

    assert response.status_code == 200
    assert "Unknown tool: rm_rf" in response.text
    assert not Agent.objects.filter(slug="helper").exists()


@pytest.mark.parametrize("variable", ["DATABASE_URL", "SECRET_KEY", "OPENAI_API_KEY_X", " MODEL_KEY"])
def test_agent_form_refuses_a_key_variable_outside_the_prefix(admin_client, variable):
    response = admin_client.post(reverse("admin:chat_agent_add"), agent_form(api_key_env=variable))

    assert response.status_code == 200
    assert "Key variables must start with MODEL_KEY_" in response.text
    assert not Agent.objects.filter(slug="helper").exists()


def test_agent_form_takes_a_key_variable_with_the_prefix(admin_client):
    response = admin_client.post(reverse("admin:chat_agent_add"), agent_form(api_key_env="MODEL_KEY_RESEARCH"))

    assert response.status_code == 302
    assert Agent.objects.get(slug="helper").api_key_env == "MODEL_KEY_RESEARCH"


def test_agent_form_saves_tools_as_a_json_list(admin_client):
    response = admin_client.post(reverse("admin:chat_agent_add"), agent_form(tools=["calculator", "current_time"]))

    assert response.status_code == 302
    assert Agent.objects.get(slug="helper").tools == ["calculator", "current_time"]


def test_agent_page_lists_the_available_tools(admin_client):
    page = admin_client.get(reverse("admin:chat_agent_change", args=[Agent.objects.get(slug="assistant").pk])).text

    for name in ["calculator", "current_time", "search_messages", "client_time", "webhook_post"]:
        assert name in page


def test_agent_with_a_retired_tool_must_drop_it_to_be_saved(admin_client):
    agent = Agent.objects.get(slug="coder")
    Agent.objects.filter(pk=agent.pk).update(tools=["calculator", "retired_tool"])
    url = reverse("admin:chat_agent_change", args=[agent.pk])

    assert "retired_tool" in admin_client.get(url).text
    rejected = admin_client.post(url, agent_form(slug="coder", name="Coder", tools=["calculator", "retired_tool"]))
    accepted = admin_client.post(url, agent_form(slug="coder", name="Coder", tools=["calculator"]))

    assert "Unknown tool: retired_tool" in rejected.text
    assert accepted.status_code == 302
    assert Agent.objects.get(pk=agent.pk).tools == ["calculator"]


# Read-only lists --------------------------------------------------------------


def test_message_list_filters_by_status_and_searches_content(admin_client, user):
    session = make_session(user, "Mixed")
    say(session, user, "needle in a haystack")
    add_reply(session, "broken", status=Message.Status.FAILED, error="boom")
    url = reverse("admin:chat_message_changelist")

    failed = admin_client.get(url, {"status__exact": "failed"})
    found = admin_client.get(url, {"q": "needle"})

    assert [m.content for m in failed.context["cl"].result_list] == ["broken"]
    assert [m.content for m in found.context["cl"].result_list] == ["needle in a haystack"]


def test_messages_and_reactions_are_read_only(admin_client, user):
    session = make_session(user, "Frozen")
    message = say(session, user, "unchangeable")
    reaction = Reaction.objects.create(message=message, user=user, emoji="👍")

    view = admin_client.get(reverse("admin:chat_message_change", args=[message.pk]))
    edit = admin_client.post(reverse("admin:chat_message_change", args=[message.pk]), {"content": "changed"})
    delete = admin_client.post(reverse("admin:chat_message_delete", args=[message.pk]), {"post": "yes"})
    reaction_delete = admin_client.post(reverse("admin:chat_reaction_delete", args=[reaction.pk]), {"post": "yes"})

    assert view.status_code == 200 and "👍 1" in view.text
    assert (edit.status_code, delete.status_code, reaction_delete.status_code) == (403, 403, 403)
    message.refresh_from_db()
    assert message.content == "unchangeable"
    assert Reaction.objects.filter(pk=reaction.pk).exists()


@pytest.mark.parametrize(
    "name",
    [
        "chat_reaction", "chat_idempotencyrecord", "chat_worker", "chat_agent", "chat_message", "chat_toolcall",
        "chat_approval", "chat_plan",
    ],
)
def test_other_admin_lists_load(admin_client, name):
    assert admin_client.get(reverse(f"admin:{name}_changelist")).status_code == 200


# Sessions; tool calls, approvals, plans; then per session and chunk of messages: the messages and their reactions.
def json_export_queries(chunks: int) -> int:
    return 4 + 2 * chunks


def test_exports_read_messages_a_chunk_at_a_time(user, django_assert_num_queries, monkeypatch):
    from chat import exports

    small = make_session(user, "small")
    add_reply(small, "one")
    large = make_session(user, "large")
    for n in range(20):
        Reaction.objects.create(message=add_reply(large, f"answer {n}"), user=user, emoji="👍")

    with django_assert_num_queries(json_export_queries(1)):
        session_export_json([small])
    with django_assert_num_queries(json_export_queries(2)):  # one chunk each: 20 messages take what 1 does
        document = json.loads(session_export_json([large, small]))
    with django_assert_num_queries(1 + 2 * 2):
        session_export_markdown([large, small])
    assert [s["title"] for s in document] == ["large", "small"]
    assert [m["seq"] for m in document[0]["messages"]] == list(range(1, 21))

    monkeypatch.setattr(exports, "EXPORT_CHUNK", 6)  # 20 messages: chunks of 6, 6, 6 and 2
    with django_assert_num_queries(json_export_queries(4)):
        chunked = json.loads(session_export_json([large]))
    assert chunked[0]["messages"] == document[0]["messages"]


def test_markdown_export_quotes_every_line_whatever_ends_it_and_escapes_html(user):
    session = make_session(user, "forgery <b>")
    forged = "fine\r### 99. system · text · complete\r\n<script>alert(1)</script>\u2028- Owner: root"
    say(session, user, forged)
    text = session_export_markdown([session])
    entries = [line for line in text.splitlines() if line.startswith("### ")]
    assert entries == ["### 1. user · text · complete"]  # the forged heading stayed inside the quote
    body = text[text.index("### 1."):]
    assert "> ### 99. system" in body and "> &lt;script&gt;alert(1)&lt;/script&gt;" in body and "> - Owner: root" in body
    assert "<script>" not in text and "## forgery &lt;b&gt;" in text
    assert "\r" not in text and "\u2028" not in text


def test_session_page_shows_messages_a_page_at_a_time(admin_client, user):
    from sessions_app import admin as sessions_admin

    session = make_session(user, "long")
    for n in range(1, 12):
        add_reply(session, f"answer number {n}.")
    sessions_admin.MESSAGES_PER_PAGE, old = 5, sessions_admin.MESSAGES_PER_PAGE
    try:
        first = admin_client.get(change_url(session)).content.decode()
        last = admin_client.get(change_url(session) + "?messages_page=3").content.decode()
        odd = admin_client.get(change_url(session) + "?messages_page=x").content.decode()
    finally:
        sessions_admin.MESSAGES_PER_PAGE = old
    assert "answer number 1." in first and "answer number 5." in first and "answer number 6." not in first
    assert "page 1 of 3" in first and "?messages_page=2" in first
    assert "answer number 11." in last and "answer number 10." not in last and "page 3 of 3" in last
    assert "page 1 of 3" in odd  # a bad page number shows the first page


def test_json_export_query_count_does_not_grow_with_tool_calls_approvals_and_plans(user, other_user, django_assert_num_queries):
    small, large = make_session(user, "two of each"), make_session(user, "twenty of each")
    add_agentic_rows(small, 2, other_user)
    add_agentic_rows(large, 20, other_user)

    with django_assert_num_queries(json_export_queries(1)):
        session_export_json([small])
    with django_assert_num_queries(json_export_queries(2)):
        document = json.loads(session_export_json([large, small]))

    assert [len(s["tool_calls"]) for s in document] == [20, 2]
    assert [len(s["approvals"]) for s in document] == [20, 2]
    assert [len(s["plans"]) for s in document] == [20, 2]


# Tool calls, approvals and plans lists ----------------------------------------------


@pytest.mark.parametrize("model", ["toolcall", "approval", "plan"])
def test_tool_call_approval_and_plan_admin_is_read_only(admin_client, user, other_user, model):
    session = make_session(user, "Frozen tools")
    add_agentic_rows(session, 1, other_user)
    obj = {"toolcall": ToolCall, "approval": Approval, "plan": Plan}[model].objects.get(session=session)
    change = reverse(f"admin:chat_{model}_change", args=[obj.pk])

    changelist = admin_client.get(reverse(f"admin:chat_{model}_changelist"))
    view = admin_client.get(change)
    add = admin_client.get(reverse(f"admin:chat_{model}_add"))
    edit = admin_client.post(change, {"status": "pending", "comment": "changed"})
    delete = admin_client.post(reverse(f"admin:chat_{model}_delete", args=[obj.pk]), {"post": "yes"})

    assert changelist.status_code == 200 and changelist.context["has_add_permission"] is False
    assert list(changelist.context["cl"].result_list) == [obj]
    assert view.status_code == 200 and view.context["has_change_permission"] is False
    assert 'name="_save"' not in view.text and 'name="_continue"' not in view.text
    assert (add.status_code, edit.status_code, delete.status_code) == (403, 403, 403)
    fresh = type(obj).objects.get(pk=obj.pk)
    assert fresh.status == obj.status and getattr(fresh, "comment", "") == getattr(obj, "comment", "")


def test_tool_call_approval_and_plan_lists_query_count_does_not_grow_with_rows(admin_client, user, other_user):
    session = make_session(user, "Many tools")
    add_agentic_rows(session, 2, other_user)
    urls = [reverse(f"admin:chat_{model}_changelist") for model in ["toolcall", "approval", "plan"]]
    for url in urls:
        admin_client.get(url)  # warm-up

    with_2 = [count_queries(admin_client, url) for url in urls]
    add_agentic_rows(session, 20, other_user)
    with_22 = [count_queries(admin_client, url) for url in urls]

    assert with_22 == with_2


def test_tool_call_list_filters_by_status_and_searches_name_and_session(admin_client, user):
    first, second = make_session(user, "first"), make_session(user, "second")
    add_tool_call(first, add_reply(first, "a"), "calculator", status=ToolCall.Status.DONE)
    add_tool_call(first, add_reply(first, "b"), "webhook_post", status=ToolCall.Status.AWAITING_APPROVAL)
    add_tool_call(second, add_reply(second, "c"), "current_time", status=ToolCall.Status.DONE)
    url = reverse("admin:chat_toolcall_changelist")

    def names(**params: str) -> set[str]:
        response = admin_client.get(url, params)
        assert response.status_code == 200
        return {call.name for call in response.context["cl"].result_list}

    assert names(status__exact="done") == {"calculator", "current_time"}
    assert names(q="webhook") == {"webhook_post"}
    assert names(q=str(second.pk)) == {"current_time"}
    assert names(q=str(first.pk), status__exact="done") == {"calculator"}


def test_approval_and_plan_lists_filter_by_status_and_search(admin_client, user, other_user):
    first, second = make_session(user, "first"), make_session(user, "second")
    reply = add_reply(first, "a")
    add_approval(first, add_tool_call(first, reply, "webhook_post"))
    add_approval(second, add_tool_call(second, add_reply(second, "b"), "delete_things"), status=Approval.Status.REJECTED)
    pending_plan = add_plan(first, reply)
    done_plan = add_plan(second, add_reply(second, "c"), steps=[{"agent": "researcher", "instruction": "Find sources"}], status=Plan.Status.DONE)
    approvals_url, plans_url = reverse("admin:chat_approval_changelist"), reverse("admin:chat_plan_changelist")

    def results(url: str, **params: str) -> list[Any]:
        response = admin_client.get(url, params)
        assert response.status_code == 200
        return list(response.context["cl"].result_list)

    assert [a.tool_call.name for a in results(approvals_url, status__exact="rejected")] == ["delete_things"]
    assert [a.tool_call.name for a in results(approvals_url, q="webhook")] == ["webhook_post"]
    assert [a.tool_call.name for a in results(approvals_url, q=str(second.pk))] == ["delete_things"]
    assert results(plans_url, status__exact="pending") == [pending_plan]
    assert results(plans_url, q=str(second.pk)) == [done_plan]
    assert results(plans_url, q="Find sources") == [done_plan]


def test_session_page_shows_the_tree_with_the_active_branch_marked_and_the_queue(admin_client, user):
    session = make_session(user, "Tree")
    first = say(session, user, "first words")
    turns.turn_start(session_id=session.pk, user=user, content="first words, edited", reply=False, edit_of=first.pk)
    session.refresh_from_db()
    from chat.models import QueuedMessage

    QueuedMessage.objects.create(session=session, position=0, content="waiting <b>here</b>", reply=True)
    page = admin_client.get(change_url(session)).text
    messages = table(page, "chat-messages")
    # Both versions are listed by seq, each with its branch; the edited one is on the active branch.
    assert messages.index("first words</div>") < messages.index("first words, edited")
    assert "line 1 · other" in messages and "line 2 · active" in messages
    assert messages.count("1 of 2") == 1 and messages.count("2 of 2") == 1
    queue = table(page, "chat-queue")
    assert "waiting &lt;b&gt;here&lt;/b&gt;" in queue


def test_exports_every_branch_action_holds_both_versions(admin_client, user):
    session = make_session(user, "Both")
    first = say(session, user, "before the edit")
    turns.turn_start(session_id=session.pk, user=user, content="after the edit", reply=False, edit_of=first.pk)
    response = admin_client.post(SESSIONS_URL, {"action": "download_json_every_branch", "_selected_action": [str(session.pk)]})
    body = json.loads(b"".join(response.streaming_content))
    assert [m["content"] for m in body[0]["messages"]] == ["before the edit", "after the edit"] and body[0]["branches"] == "all"
    response = admin_client.post(SESSIONS_URL, {"action": "download_json", "_selected_action": [str(session.pk)]})
    body = json.loads(b"".join(response.streaming_content))
    assert [m["content"] for m in body[0]["messages"]] == ["after the edit"] and body[0]["branches"] == "active"
