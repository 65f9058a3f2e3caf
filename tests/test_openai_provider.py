"""The OpenAI-compatible provider against a local fake of the chat completions API."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chat.models import Agent
from chat.providers import ProviderError, ProviderEvent, ReplyContext, get_provider
from chat.providers.openai_compat import OpenAICompatProvider, build_messages
from tests.fake_openai import TEXT, TEXT_PIECES, USAGE, FakeOpenAI


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(autouse=True)
def _quick_limits(settings, monkeypatch):  # type: ignore[no-untyped-def]
    settings.CHAT = {
        **settings.CHAT,
        "OPENAI_API_KEY": "",
        "OPENAI_TIMEOUT": 5.0,
        "OPENAI_FIRST_TOKEN_TIMEOUT": 5.0,
        "OPENAI_MAX_RETRIES": 2,
    }
    monkeypatch.setattr(OpenAICompatProvider, "retry_backoff", 0.05)


def make_agent(fake: FakeOpenAI, model: str, **fields: Any) -> Agent:
    defaults: dict[str, Any] = {"slug": "gpt", "name": "GPT", "provider": Agent.Provider.OPENAI, "base_url": fake.url + "/v1", "model": model}
    return Agent(**{**defaults, **fields})


def context(agent: Agent, prompt: str = "Hi there", history: list[dict[str, Any]] | None = None, tools: list[dict[str, Any]] | None = None) -> ReplyContext:
    return ReplyContext(
        message_id="m1", session_id="s1", agent=agent, history=history or [], prompt=prompt, tools=tools or []
    )


async def collect(agent: Agent, ctx: ReplyContext | None = None) -> list[ProviderEvent]:
    return [event async for event in OpenAICompatProvider(agent).stream(ctx or context(agent))]


async def collect_until_error(agent: Agent) -> tuple[list[ProviderEvent], ProviderError]:
    events: list[ProviderEvent] = []
    with pytest.raises(ProviderError) as info:
        async for event in OpenAICompatProvider(agent).stream(context(agent)):
            events.append(event)
    return events, info.value


def texts(events: list[ProviderEvent]) -> list[str]:
    return [e.text for e in events if e.kind == "text"]


CALCULATOR = {
    "name": "calculator",
    "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
}


# Streaming ---------------------------------------------------------------------------


async def test_text_streams_as_several_text_events_and_usage_is_reported(fake: FakeOpenAI) -> None:
    events = await collect(make_agent(fake, "text"))

    assert texts(events) == TEXT_PIECES
    assert "".join(texts(events)) == TEXT
    assert events[-1].kind == "usage"
    assert events[-1].data == {**USAGE, "model": "text", "finish_reason": "stop"}
    assert fake.last_body["stream"] is True
    assert fake.last_body["stream_options"] == {"include_usage": True}


async def test_tool_call_fragments_are_assembled_with_parsed_arguments(fake: FakeOpenAI) -> None:
    agent = make_agent(fake, "tool-call")
    events = await collect(agent, context(agent, tools=[CALCULATOR]))

    calls = [e.data for e in events if e.kind == "tool_call"]
    assert calls == [{"id": "call_abc", "name": "calculator", "arguments": {"expression": "2*(3+4)"}}]
    assert texts(events) == []
    assert events[-1].kind == "usage" and events[-1].data["finish_reason"] == "tool_calls"


async def test_two_tool_calls_in_one_reply_come_in_order_after_the_text(fake: FakeOpenAI) -> None:
    events = await collect(make_agent(fake, "two-tools"))

    assert [e.kind for e in events] == ["text", "tool_call", "tool_call", "usage"]
    assert events[0].text == "Let me check both."
    assert events[1].data == {"id": "call_one", "name": "get_time", "arguments": {"timezone": "Europe/Paris"}}
    assert events[2].data == {"id": "call_two", "name": "calculator", "arguments": {"expression": "1+1"}}


async def test_tool_call_with_invalid_json_arguments_reports_the_raw_text(fake: FakeOpenAI) -> None:
    events = await collect(make_agent(fake, "bad-arguments"))

    (call,) = [e.data for e in events if e.kind == "tool_call"]
    assert call["name"] == "calculator"
    assert call["arguments"] == {}
    assert call["arguments_error"]["raw"] == '{"expression": 2*(3'
    assert "not valid JSON" in call["arguments_error"]["reason"]


# What is sent ------------------------------------------------------------------------


async def test_system_prompt_history_and_prompt_are_sent_in_order(fake: FakeOpenAI) -> None:
    agent = make_agent(fake, "text", system_prompt="You are terse.")
    history = [{"role": "user", "content": "First question"}, {"role": "assistant", "content": "First answer"}]
    await collect(agent, context(agent, prompt="Second question", history=history))

    assert fake.last_body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "Second question"},
    ]
    assert "tools" not in fake.last_body


async def test_prompt_already_last_in_history_is_not_sent_twice(fake: FakeOpenAI) -> None:
    agent = make_agent(fake, "text")
    history = [{"role": "user", "content": "Only once"}]
    await collect(agent, context(agent, prompt="Only once", history=history))

    assert fake.last_body["messages"] == [{"role": "user", "content": "Only once"}]


async def test_history_with_tool_calls_and_results_is_sent_in_openai_shape(fake: FakeOpenAI) -> None:
    agent = make_agent(fake, "text")
    history = [
        {"role": "user", "content": "What is 2*(3+4)?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "call_1", "name": "calculator", "arguments": {"expression": "2*(3+4)"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "14"},
    ]
    await collect(agent, context(agent, prompt="", history=history))

    assert fake.last_body["messages"] == [
        {"role": "user", "content": "What is 2*(3+4)?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "2*(3+4)"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "14"},
    ]


def test_tool_results_without_their_call_and_calls_without_results_are_left_out() -> None:
    agent = Agent(slug="a", name="A", provider=Agent.Provider.OPENAI)
    history = [
        {"role": "tool", "tool_call_id": "cut_off", "content": "orphan"},
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": "Trying", "tool_calls": [{"id": "never_answered", "name": "x", "arguments": {}}]},
    ]
    messages = build_messages(context(agent, prompt="", history=history), "")

    assert messages == [{"role": "user", "content": "Go"}, {"role": "assistant", "content": "Trying"}]


async def test_tools_are_sent_as_functions(fake: FakeOpenAI) -> None:
    agent = make_agent(fake, "text")
    await collect(agent, context(agent, tools=[CALCULATOR]))

    assert fake.last_body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "calculator",
                "description": "Evaluate an arithmetic expression.",
                "parameters": CALCULATOR["parameters"],
            },
        }
    ]


@pytest.mark.django_db(transaction=True)
async def test_agent_base_url_model_and_api_key_variable_are_used(fake: FakeOpenAI, monkeypatch, settings) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MODEL_KEY_RESEARCH", "sk-from-agent-variable")
    settings.CHAT = {**settings.CHAT, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_MODEL": "default-model", "OPENAI_API_KEY": "sk-default"}
    await Agent.objects.acreate(
        slug="research", name="Research", provider="openai", base_url=fake.url + "/v1", model="text", api_key_env="MODEL_KEY_RESEARCH"
    )
    agent = await Agent.objects.aget(slug="research")
    provider = get_provider(agent)
    assert isinstance(provider, OpenAICompatProvider)

    events = [e async for e in provider.stream(context(agent))]

    assert "".join(texts(events)) == TEXT
    request = fake.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "text"
    assert request["headers"]["authorization"] == "Bearer sk-from-agent-variable"


async def test_settings_fill_in_what_the_agent_leaves_empty(fake: FakeOpenAI, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "OPENAI_BASE_URL": fake.url + "/v1", "OPENAI_MODEL": "text", "OPENAI_API_KEY": "sk-from-settings"}
    agent = Agent(slug="plain", name="Plain", provider=Agent.Provider.OPENAI)

    events = await collect(agent)

    assert "".join(texts(events)) == TEXT
    assert fake.requests[-1]["body"]["model"] == "text"
    assert fake.requests[-1]["headers"]["authorization"] == "Bearer sk-from-settings"


async def test_an_empty_key_is_sent_as_a_placeholder(fake: FakeOpenAI) -> None:
    await collect(make_agent(fake, "text"))

    assert fake.requests[-1]["headers"]["authorization"] == "Bearer not-needed"


async def test_a_missing_key_variable_is_a_readable_error(fake: FakeOpenAI, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("MODEL_KEY_NO_SUCH", raising=False)
    _, error = await collect_until_error(make_agent(fake, "text", api_key_env="MODEL_KEY_NO_SUCH"))

    assert str(error) == "The API key variable MODEL_KEY_NO_SUCH is not set on the server."
    assert fake.requests == []


async def test_a_server_that_refuses_stream_options_is_asked_again_without_them(fake: FakeOpenAI) -> None:
    events = await collect(make_agent(fake, "no-stream-options"))

    assert "".join(texts(events)) == TEXT
    assert [("stream_options" in r["body"]) for r in fake.requests] == [True, False]
    assert all(e.kind != "usage" for e in events)


# Failures ----------------------------------------------------------------------------


async def test_mid_stream_error_event_raises_after_the_text_already_yielded(fake: FakeOpenAI) -> None:
    events, error = await collect_until_error(make_agent(fake, "mid-error"))

    assert texts(events) == ["Partial", " answer"]
    assert "reported an error while answering" in str(error)
    assert "overloaded" in str(error)
    assert len(fake.requests) == 1  # never retried once text was out


async def test_mid_stream_error_object_raises_after_the_text_already_yielded(fake: FakeOpenAI) -> None:
    events, error = await collect_until_error(make_agent(fake, "mid-error-object"))

    assert texts(events) == ["Partial"]
    assert str(error) == "The model server reported an error while answering. The server said: Engine loop has died"


async def test_mid_stream_dropped_connection_raises_after_the_text_already_yielded(fake: FakeOpenAI) -> None:
    events, error = await collect_until_error(make_agent(fake, "mid-drop"))

    assert texts(events) == ["Partial", " answer"]
    assert str(error) == "The connection to the model server broke while the reply was being written."
    assert len(fake.requests) == 1


async def test_hang_after_headers_raises_within_the_first_token_timeout(fake: FakeOpenAI, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "OPENAI_FIRST_TOKEN_TIMEOUT": 1.0}
    started = time.monotonic()
    events, error = await collect_until_error(make_agent(fake, "hang"))
    elapsed = time.monotonic() - started

    assert events == []
    assert str(error) == "The model did not answer within 1 s."
    assert 0.9 <= elapsed < 2.5


async def test_unanswered_request_raises_within_the_first_token_timeout(fake: FakeOpenAI, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "OPENAI_FIRST_TOKEN_TIMEOUT": 1.0}
    started = time.monotonic()
    _, error = await collect_until_error(make_agent(fake, "hang-no-headers"))

    assert str(error) == "The model did not answer within 1 s."
    assert time.monotonic() - started < 2.5
    assert len(fake.requests) == 1


async def test_silence_after_the_first_token_raises_within_the_gap_timeout(fake: FakeOpenAI, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "OPENAI_TIMEOUT": 1.0}
    started = time.monotonic()
    events, error = await collect_until_error(make_agent(fake, "stall"))
    elapsed = time.monotonic() - started

    assert texts(events) == ["Partial"]
    assert str(error) == "The model stopped answering for 1 s."
    assert 0.9 <= elapsed < 2.5


async def test_reasoning_chunks_count_as_an_answer_for_the_first_token_timeout(fake: FakeOpenAI, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "OPENAI_FIRST_TOKEN_TIMEOUT": 0.5, "OPENAI_TIMEOUT": 0.5}
    events = await collect(make_agent(fake, "thinking"))

    assert texts(events) == ["Thought it through."]


async def test_401_maps_to_a_readable_error_without_the_servers_text(fake: FakeOpenAI) -> None:
    _, error = await collect_until_error(make_agent(fake, "unauthorized"))

    assert str(error) == "The model server rejected the API key."
    assert len(fake.requests) == 1


async def test_404_names_the_model(fake: FakeOpenAI) -> None:
    _, error = await collect_until_error(make_agent(fake, "missing-model"))

    assert "does not know the model 'missing-model'" in str(error)
    assert fake.url in str(error)


async def test_429_then_ok_succeeds_with_one_retry(fake: FakeOpenAI) -> None:
    events = await collect(make_agent(fake, "rate-limited-once"))

    assert "".join(texts(events)) == TEXT
    assert len(fake.requests) == 2


async def test_connection_closed_before_any_answer_is_retried(fake: FakeOpenAI) -> None:
    events = await collect(make_agent(fake, "drop-once"))

    assert "".join(texts(events)) == TEXT
    assert len(fake.requests) == 2


async def test_persistent_500_gives_up_after_the_bounded_retries(fake: FakeOpenAI, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "OPENAI_MAX_RETRIES": 2}
    _, error = await collect_until_error(make_agent(fake, "server-error"))

    assert str(error) == "The model server failed (500). Try again in a moment."
    assert len(fake.requests) == 3


async def test_no_retries_when_max_retries_is_zero(fake: FakeOpenAI, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CHAT = {**settings.CHAT, "OPENAI_MAX_RETRIES": 0}
    await collect_until_error(make_agent(fake, "server-error"))

    assert len(fake.requests) == 1


async def test_connection_refused_gives_a_readable_error(settings) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    agent = Agent(slug="gone", name="Gone", provider=Agent.Provider.OPENAI, base_url=base_url, model="text")

    _, error = await collect_until_error(agent)

    assert str(error) == f"Could not reach the model server at {base_url}."


async def test_credentials_in_the_base_url_are_not_shown(settings) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    agent = Agent(slug="gone", name="Gone", provider=Agent.Provider.OPENAI, base_url=f"http://user:secret@127.0.0.1:{port}/v1", model="m")

    _, error = await collect_until_error(agent)

    assert "secret" not in str(error)
    assert f"127.0.0.1:{port}/v1" in str(error)


async def test_a_base_url_without_http_scheme_is_a_readable_error() -> None:
    agent = Agent(slug="bad", name="Bad", provider=Agent.Provider.OPENAI, base_url="localhost:11434/v1", model="m")

    _, error = await collect_until_error(agent)

    assert "must start with http:// or https://" in str(error)


# Cancellation ------------------------------------------------------------------------


async def test_cancelling_the_consumer_closes_the_http_stream(fake: FakeOpenAI) -> None:
    agent = make_agent(fake, "slow")
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in OpenAICompatProvider(agent).stream(context(agent)):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    deadline = time.monotonic() + 3
    while "slow" not in fake.disconnects and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert fake.disconnects == ["slow"]


async def test_stopping_early_closes_the_http_stream(fake: FakeOpenAI) -> None:
    agent = make_agent(fake, "slow")
    stream = OpenAICompatProvider(agent).stream(context(agent))
    first = await anext(stream)
    await stream.aclose()

    assert first.text == "chunk 0 "
    deadline = time.monotonic() + 3
    while "slow" not in fake.disconnects and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert fake.disconnects == ["slow"]


async def test_cancelling_while_waiting_for_the_first_token_ends_at_once(fake: FakeOpenAI) -> None:
    agent = make_agent(fake, "hang")

    async def consume() -> None:
        async for _ in OpenAICompatProvider(agent).stream(context(agent)):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert time.monotonic() - started < 1


async def test_a_key_variable_outside_the_prefix_is_never_read_or_sent(fake: FakeOpenAI, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", "postgres://secret@db/prod")
    _, error = await collect_until_error(make_agent(fake, "text", api_key_env="DATABASE_URL"))

    assert str(error) == "The API key variable DATABASE_URL is not allowed: key variables start with MODEL_KEY_."
    assert fake.requests == []
