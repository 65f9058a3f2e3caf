from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from chat.models import Message
from sessions_app.models import ChatSession
from tests.api import create_session, messages_url, send, walk
from tests.conftest import requires_postgres

T = TypeVar("T")

pytestmark = [requires_postgres, pytest.mark.django_db(transaction=True)]


def run_in_threads(count: int, target: Callable[[int], T]) -> list[T]:
    """Call `target(0..count-1)` in `count` threads released at once; exceptions surface here."""
    barrier = threading.Barrier(count)

    def worker(index: int) -> T:
        try:
            barrier.wait(timeout=10)
            return target(index)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(worker, i) for i in range(count)]
        return [future.result(timeout=60) for future in futures]


def client_for(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def test_parallel_sends_to_one_session_get_seqs_1_to_20_without_duplicates(user):
    token = Token.objects.create(user=user).key
    session = create_session(client_for(token))

    def one_send(index: int) -> tuple[int, dict]:
        response = send(client_for(token), session["id"], f"parallel {index}")
        return response.status_code, response.json()

    results = run_in_threads(20, one_send)
    assert sorted(status for status, _ in results) == [201] * 20, results
    assert sorted(body["seq"] for _, body in results) == list(range(1, 21))

    seqs = list(Message.objects.filter(session_id=session["id"]).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 21))
    assert ChatSession.objects.get(pk=session["id"]).seq == 20
    listed, _ = walk(client_for(token), f"{messages_url(session['id'])}?limit=7")
    assert [m["seq"] for m in listed] == list(range(1, 21))
    assert sorted(m["content"] for m in listed) == sorted(f"parallel {i}" for i in range(20))


def test_parallel_sends_to_different_sessions_each_start_at_seq_1(user):
    token = Token.objects.create(user=user).key
    sessions = [create_session(client_for(token))["id"] for _ in range(4)]

    def one_send(index: int) -> int:
        return send(client_for(token), sessions[index % 4], f"m{index}").status_code

    results = run_in_threads(16, one_send)
    assert results == [201] * 16
    for session_id in sessions:
        seqs = list(Message.objects.filter(session_id=session_id).order_by("seq").values_list("seq", flat=True))
        assert seqs == [1, 2, 3, 4]
