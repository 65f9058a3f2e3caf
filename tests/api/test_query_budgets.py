from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat.models import Agent, Message, Reaction
from sessions_app.models import ChatSession
from tests.api import SESSIONS, messages_url

pytestmark = pytest.mark.django_db

# Auth + page (+ the session and the reactions prefetch for messages): a handful, never one per row.
MAX_QUERIES = 5


def fill_sessions(user, other_user, count: int) -> None:
    agent = Agent.objects.get(slug="assistant")
    sessions = ChatSession.objects.bulk_create(
        [ChatSession(owner=user, title=f"s{i}", mode="direct", agent=agent, seq=2, message_count=2) for i in range(count)]
    )
    messages = Message.objects.bulk_create(
        [
            Message(session=session, seq=seq, role="user", content=f"m{seq}")
            for session in sessions
            for seq in (1, 2)
        ]
    )
    Reaction.objects.bulk_create([Reaction(message=m, user=other_user, emoji="\U0001f44d") for m in messages[::2]])


def fill_messages(session: ChatSession, user, other_user, count: int) -> None:
    agent = Agent.objects.get(slug="assistant")
    messages = Message.objects.bulk_create(
        [
            Message(
                session=session,
                seq=seq,
                role="assistant" if seq % 2 == 0 else "user",
                agent=agent if seq % 2 == 0 else None,
                content=f"m{seq}",
            )
            for seq in range(1, count + 1)
        ]
    )
    reactions = [Reaction(message=m, user=user, emoji="\U0001f44d") for m in messages]
    reactions += [Reaction(message=m, user=other_user, emoji="\u2764\ufe0f") for m in messages[::3]]
    Reaction.objects.bulk_create(reactions)
    ChatSession.objects.filter(pk=session.pk).update(seq=count, message_count=count)


def count_queries(api, url: str) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as ctx:
        response = api.get(url)
    assert response.status_code == 200, response.content
    # Counts live on the session rows: no request counts the messages of a session.
    assert not [q["sql"] for q in ctx.captured_queries if "COUNT(" in q["sql"].upper()], ctx.captured_queries
    return len(ctx.captured_queries), response.json()


def test_sessions_list_uses_the_same_few_queries_at_5_and_at_500_sessions(api, user, other_user, make_user):
    fill_sessions(user, other_user, 5)
    small, small_body = count_queries(api, f"{SESSIONS}?limit=200")
    assert len(small_body["results"]) == 5
    assert {s["message_count"] for s in small_body["results"]} == {2}

    big_user = make_user("heavy")
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    heavy = APIClient()
    heavy.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=big_user).key}")
    fill_sessions(big_user, other_user, 500)
    big, big_body = count_queries(heavy, f"{SESSIONS}?limit=200")
    assert len(big_body["results"]) == 200
    assert {s["message_count"] for s in big_body["results"]} == {2}
    assert {s["agent"] for s in big_body["results"]} == {"assistant"}

    assert small == big, (small, big)
    assert big <= MAX_QUERIES

    following, next_body = count_queries(heavy, big_body["next"])
    assert len(next_body["results"]) == 200
    assert following == big


def test_messages_page_uses_the_same_few_queries_at_5_and_at_500_messages(api, user, other_user):
    small_session = ChatSession.objects.create(owner=user, title="small")
    big_session = ChatSession.objects.create(owner=user, title="big")
    fill_messages(small_session, user, other_user, 5)
    fill_messages(big_session, user, other_user, 500)

    small, small_body = count_queries(api, f"{messages_url(small_session.pk)}?limit=200")
    big, big_body = count_queries(api, f"{messages_url(big_session.pk)}?limit=200")

    assert small_body["total_count"] == 5 and len(small_body["results"]) == 5
    assert big_body["total_count"] == 500 and len(big_body["results"]) == 200
    first = big_body["results"][0]
    assert first["reactions"] == [
        {"emoji": "\U0001f44d", "count": 1, "me": True},
        {"emoji": "\u2764\ufe0f", "count": 1, "me": False},
    ]
    assert big_body["results"][1]["agent"] == "assistant"

    assert small == big, (small, big)
    assert big <= MAX_QUERIES

    following, next_body = count_queries(api, big_body["next"])
    assert [m["seq"] for m in next_body["results"]] == list(range(201, 401))
    assert following == big


def test_messages_page_with_the_default_page_size_is_within_budget(api, user, other_user):
    session = ChatSession.objects.create(owner=user, title="default")
    fill_messages(session, user, other_user, 120)
    queries, body = count_queries(api, messages_url(session.pk))
    assert len(body["results"]) == 50
    assert queries <= MAX_QUERIES
