"""The OpenAI-compatible provider: streaming chat completions from OpenAI, vLLM, Ollama or llama.cpp's server.

Built on the `openai` package, which speaks the protocol all four servers implement. The
package's own retries are off (`max_retries=0`): retrying is done here, and only before the
first token, so text already handed to the caller is never produced twice.

Time limits:
- OPENAI_FIRST_TOKEN_TIMEOUT bounds everything before the first token: connecting, the
  server's queue and prompt processing, retries and their backoff.
- OPENAI_TIMEOUT bounds each silence after that (the gap between two chunks).
The HTTP client's own timeouts are set from the two as a backstop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import uuid
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai
from django.conf import settings

from chat.models import Agent
from chat.providers.base import ProviderError, ProviderEvent, ReplyContext

logger = logging.getLogger(__name__)

# Servers such as Ollama and llama.cpp accept any key, but the client needs a non-empty one.
PLACEHOLDER_API_KEY = "not-needed"

_KEY_LIKE = re.compile(r"\b(sk|key|token)[-_][A-Za-z0-9_\-*]{6,}", re.IGNORECASE)
_MAX_SERVER_TEXT = 300
_REASONING_FIELDS = ("reasoning_content", "reasoning")

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], openai.AsyncOpenAI]] = (
    weakref.WeakKeyDictionary()
)


class _ErrorEvent(Exception):
    """An error the server reported inside the stream in a shape the client does not raise for itself."""


@dataclass
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: str = ""


def _seconds(value: float) -> str:
    return f"{value:g}"


def _display_url(url: str) -> str:
    """The base URL without credentials or query, safe to show to a user."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the configured address"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _server_text(exc: openai.APIError) -> str:
    """The server's own explanation, shortened and with anything key-like masked."""
    message = ""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            message = inner["message"]
        elif isinstance(body.get("message"), str):
            message = body["message"]
    elif isinstance(body, str):
        message = body
    if not message and not isinstance(exc, openai.APIStatusError):
        message = exc.message
    return _tidy(message)


def _tidy(message: str) -> str:
    message = _KEY_LIKE.sub("[redacted]", " ".join(message.split()))
    if len(message) > _MAX_SERVER_TEXT:
        message = message[:_MAX_SERVER_TEXT] + "…"
    return message


def _with_detail(text: str, exc: openai.APIError | _ErrorEvent) -> str:
    detail = _server_text(exc) if isinstance(exc, openai.APIError) else _tidy(str(exc))
    return f"{text} The server said: {detail}" if detail else text


def _parse_arguments(raw: str) -> tuple[dict[str, Any], dict[str, str] | None]:
    """Arguments as a dict, or `{}` and what was wrong with them."""
    if not raw.strip():
        return {}, None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        return {}, {"raw": raw, "reason": f"not valid JSON: {exc}"}
    if not isinstance(value, dict):
        return {}, {"raw": raw, "reason": f"expected a JSON object, got {type(value).__name__}"}
    return value, None


def _arguments_json(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return json.dumps(content, ensure_ascii=False)


def build_messages(ctx: ReplyContext, system_prompt: str) -> list[dict[str, Any]]:
    """The conversation in OpenAI's chat format.

    Tool results whose call is no longer in the history (cut off by the history limit) and
    calls that never got a result are left out: OpenAI and vLLM refuse such a conversation.
    Text the model wrote before calling tools and the calls themselves become one assistant
    message, as the model sent them (strict chat templates refuse two assistant turns in a row).
    The prompt is added only when it is not already the latest user message: a reply that
    continues after tool results answers the same user message, which must not be asked twice.
    """
    messages: list[dict[str, Any]] = []
    if system_prompt.strip():
        messages.append({"role": "system", "content": system_prompt})

    answered = {str(item.get("tool_call_id")) for item in ctx.history if item.get("role") == "tool" and item.get("tool_call_id")}
    announced: set[str] = set()
    for item in ctx.history:
        role = item.get("role")
        content = _content_text(item.get("content"))
        if role == "assistant":
            calls = []
            for call in item.get("tool_calls") or []:
                call_id = str(call.get("id") or "")
                if not call_id or call_id not in answered:
                    continue
                announced.add(call_id)
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": call.get("name", ""), "arguments": _arguments_json(call.get("arguments"))},
                    }
                )
            if calls:
                previous = messages[-1] if messages else None
                if previous is not None and previous["role"] == "assistant" and "tool_calls" not in previous and not content:
                    previous["tool_calls"] = calls
                else:
                    messages.append({"role": "assistant", "content": content, "tool_calls": calls})
            elif content:
                messages.append({"role": "assistant", "content": content})
        elif role == "tool":
            call_id = str(item.get("tool_call_id") or "")
            if call_id in announced:
                messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
        elif role in ("user", "system"):
            messages.append({"role": role, "content": content})

    prompt = ctx.prompt
    if prompt.strip():
        last_user = next((m for m in reversed(messages) if m["role"] == "user"), None)
        if last_user is None or last_user["content"] != prompt:
            messages.append({"role": "user", "content": prompt})
    return messages


def build_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": tool["name"],
                "description": tool.get("description", ""),
                "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
            },
        }
        for tool in tools
    ]


class OpenAICompatProvider:
    # Seconds before the first retry; doubled for each further one (with a little jitter).
    retry_backoff = 0.5
    # A server's Retry-After is honoured up to this many seconds.
    max_retry_after = 10.0

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        config = settings.CHAT
        self.base_url = (agent.base_url or config["OPENAI_BASE_URL"]).strip()
        self.model = (agent.model or config["OPENAI_MODEL"]).strip()

    # Configuration -----------------------------------------------------------------

    def _api_key(self) -> str:
        variable = self.agent.api_key_env.strip()
        if variable:
            prefix = settings.CHAT["AGENT_KEY_ENV_PREFIX"]
            if not variable.startswith(prefix):
                # Checked when the agent is saved in the admin, and here too for rows written otherwise:
                # an agent must not send DATABASE_URL or SECRET_KEY as a bearer token to its base URL.
                raise ProviderError(f"The API key variable {variable} is not allowed: key variables start with {prefix}.")
            if variable not in os.environ:
                raise ProviderError(f"The API key variable {variable} is not set on the server.")
            key = os.environ[variable]
        else:
            key = settings.CHAT["OPENAI_API_KEY"]
        return key.strip() or PLACEHOLDER_API_KEY

    def _request(self, ctx: ReplyContext) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "messages": build_messages(ctx, self.agent.system_prompt),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if ctx.tools:
            params["tools"] = build_tools(ctx.tools)
        return params

    def _client(self, api_key: str) -> openai.AsyncOpenAI:
        """A client per base URL and key, kept for the running event loop.

        Building one costs tens of milliseconds of blocking work (TLS setup), and a kept
        client reuses its connections; the HTTP pool belongs to one event loop, hence the
        cache per loop.
        """
        loop = asyncio.get_running_loop()
        clients = _clients.setdefault(loop, {})
        client = clients.get((self.base_url, api_key))
        if client is None or client.is_closed():
            if urlsplit(self.base_url).scheme not in ("http", "https"):
                raise ProviderError(
                    "The model server's base URL must start with http:// or https:// (the agent's base URL or OPENAI_BASE_URL)."
                )
            try:
                client = openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0)
            except (openai.OpenAIError, ValueError) as exc:
                logger.warning("Could not configure the model client for %s: %s", _display_url(self.base_url), exc)
                raise ProviderError(f"The model server address {_display_url(self.base_url)} is not usable.") from None
            clients[(self.base_url, api_key)] = client
        return client

    # Errors ------------------------------------------------------------------------

    def _error(self, exc: BaseException, *, started: bool, first_timeout: float, gap_timeout: float) -> ProviderError:
        """A readable message for the user; the server's details go to the log."""
        where = _display_url(self.base_url)
        if isinstance(exc, openai.APITimeoutError):
            if started:
                return ProviderError(f"The model stopped answering for {_seconds(gap_timeout)} s.")
            return ProviderError(f"The model did not answer within {_seconds(first_timeout)} s.")
        if isinstance(exc, openai.APIConnectionError):
            if started:
                return ProviderError("The connection to the model server broke while the reply was being written.")
            return ProviderError(f"Could not reach the model server at {where}.")
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status == 401:
                return ProviderError("The model server rejected the API key.")
            if status == 403:
                return ProviderError("The model server refused access with this API key (403).")
            if status == 404:
                return ProviderError(
                    f"The model server at {where} does not know the model '{self.model}' (404); check the model name and base URL."
                )
            if status == 429:
                return ProviderError("The model server is rate limiting requests (429). Try again in a moment.")
            if status >= 500:
                return ProviderError(f"The model server failed ({status}). Try again in a moment.")
            return ProviderError(_with_detail(f"The model server refused the request ({status}).", exc))
        if isinstance(exc, (openai.APIError, _ErrorEvent)):
            # An error event inside the stream.
            return ProviderError(_with_detail("The model server reported an error while answering.", exc))
        if isinstance(exc, ValueError):
            return ProviderError("The model server sent a stream that could not be read.")
        return ProviderError("The model provider failed unexpectedly.")

    @staticmethod
    def _retryable(exc: BaseException) -> bool:
        if isinstance(exc, openai.APITimeoutError):
            return False
        if isinstance(exc, openai.APIConnectionError):
            return True
        if isinstance(exc, openai.APIStatusError):
            return exc.status_code in (408, 409, 429) or exc.status_code >= 500
        return False

    def _backoff(self, attempt: int, exc: BaseException) -> float:
        if isinstance(exc, openai.APIStatusError):
            header = exc.response.headers.get("retry-after", "")
            try:
                wait = float(header)
            except ValueError:
                wait = -1.0
            if 0 <= wait <= self.max_retry_after:
                return wait
        delay = self.retry_backoff * (2**attempt)
        return delay + random.uniform(0, delay / 4)

    # Streaming ---------------------------------------------------------------------

    async def _open(
        self, client: openai.AsyncOpenAI, params: dict[str, Any], first_timeout: float, max_retries: int
    ) -> tuple[openai.AsyncStream[Any], Any]:
        """Start the stream and wait for its first chunk with something in it, retrying what can be retried.

        Returns the open stream and that chunk (None when the stream ended without one).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + first_timeout
        attempt = 0
        while True:
            stream: openai.AsyncStream[Any] | None = None
            try:
                async with asyncio.timeout_at(deadline):
                    stream = await client.chat.completions.create(**params)
                    while True:
                        try:
                            chunk = await stream.__anext__()
                        except StopAsyncIteration:
                            return stream, None
                        if _has_payload(chunk):
                            return stream, chunk
            except TimeoutError:
                await _close(stream)
                raise ProviderError(f"The model did not answer within {_seconds(first_timeout)} s.") from None
            except openai.BadRequestError:
                await _close(stream)
                if "stream_options" in params:
                    # Some older servers refuse `stream_options`; usage is then not reported.
                    logger.info("%s refused stream_options; retrying without it", _display_url(self.base_url))
                    params = {k: v for k, v in params.items() if k != "stream_options"}
                    continue
                raise
            except BaseException as exc:
                await _close(stream)
                if not self._retryable(exc) or attempt >= max_retries:
                    raise
                delay = self._backoff(attempt, exc)
                if loop.time() + delay >= deadline:
                    raise
                attempt += 1
                logger.warning(
                    "Model server %s failed before the first token (%s); retry %d of %d in %.1f s",
                    _display_url(self.base_url),
                    type(exc).__name__,
                    attempt,
                    max_retries,
                    delay,
                )
                await asyncio.sleep(delay)

    async def stream(self, ctx: ReplyContext) -> AsyncIterator[ProviderEvent]:
        config = settings.CHAT
        first_timeout = float(config["OPENAI_FIRST_TOKEN_TIMEOUT"])
        gap_timeout = float(config["OPENAI_TIMEOUT"])
        max_retries = max(0, int(config["OPENAI_MAX_RETRIES"]))
        params = self._request(ctx)
        # The client's own limits are a backstop; the timers below give the precise errors.
        params["timeout"] = openai.Timeout(max(gap_timeout, first_timeout), connect=min(gap_timeout, first_timeout))
        client = self._client(self._api_key())
        started = False
        calls: dict[int, _ToolCallParts] = {}
        usage: dict[str, Any] | None = None
        model = ""
        finish_reason: str | None = None
        try:
            stream, chunk = await self._open(client, params, first_timeout, max_retries)
            started = True
            async with stream:
                while chunk is not None:
                    _raise_error_object(chunk)
                    model = getattr(chunk, "model", None) or model
                    if getattr(chunk, "usage", None) is not None:
                        usage = _usage(chunk.usage)
                    for choice in chunk.choices or []:
                        if choice.index != 0:
                            continue
                        delta = choice.delta
                        if delta is not None:
                            text = (delta.content or "") + (getattr(delta, "refusal", None) or "")
                            if text:
                                yield ProviderEvent("text", text=text)
                            for part in delta.tool_calls or []:
                                _add_fragment(calls, part)
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
                    chunk = await _next_chunk(stream, gap_timeout)
        except ProviderError:
            raise
        except TimeoutError:
            raise ProviderError(f"The model stopped answering for {_seconds(gap_timeout)} s.") from None
        except Exception as exc:
            if isinstance(exc, openai.OpenAIError):
                logger.warning("Model server %s: %s: %s", _display_url(self.base_url), type(exc).__name__, exc)
            else:
                logger.exception("Reading the stream from %s failed", _display_url(self.base_url))
            raise self._error(exc, started=started, first_timeout=first_timeout, gap_timeout=gap_timeout) from None

        for index in sorted(calls):
            parts = calls[index]
            arguments, problem = _parse_arguments(parts.arguments)
            data: dict[str, Any] = {"id": parts.id or f"call_{uuid.uuid4().hex[:24]}", "name": parts.name, "arguments": arguments}
            if problem is not None:
                data["arguments_error"] = problem
            yield ProviderEvent("tool_call", data=data)
        if usage is not None:
            usage["model"] = model or self.model
            if finish_reason:
                usage["finish_reason"] = finish_reason
            yield ProviderEvent("usage", data=usage)


def _raise_error_object(chunk: Any) -> None:
    """vLLM reports an error inside the stream as `{"object": "error", "message": ...}`."""
    if getattr(chunk, "object", None) != "error":
        return
    extra = getattr(chunk, "model_extra", None) or {}
    message = extra.get("message")
    raise _ErrorEvent(message if isinstance(message, str) else "")


def _has_payload(chunk: Any) -> bool:
    """Whether a chunk carries more than the opening `role` announcement."""
    if getattr(chunk, "object", None) == "error" or getattr(chunk, "usage", None) is not None:
        return True
    for choice in chunk.choices or []:
        if choice.finish_reason:
            return True
        delta = choice.delta
        if delta is None:
            continue
        if delta.content or getattr(delta, "refusal", None) or delta.tool_calls:
            return True
        # Reasoning models on vLLM, Ollama and llama.cpp stream their thinking in extra fields:
        # not shown, but proof that the model is working.
        extra = getattr(delta, "model_extra", None) or {}
        if any(extra.get(name) for name in _REASONING_FIELDS):
            return True
    return False


async def _next_chunk(stream: openai.AsyncStream[Any], timeout: float) -> Any:
    # A timer per read rather than around the loop: the generator must not yield inside a
    # timeout scope, or the timeout would cancel whatever the consumer is doing meanwhile.
    async with asyncio.timeout(timeout):
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None


async def _close(stream: openai.AsyncStream[Any] | None) -> None:
    if stream is None:
        return
    try:
        await stream.close()
    except Exception:  # closing a broken connection may fail again; nothing left to save
        logger.debug("Closing the model stream failed", exc_info=True)


def _add_fragment(calls: dict[int, _ToolCallParts], part: Any) -> None:
    index = part.index if part.index is not None else len(calls)
    entry = calls.setdefault(index, _ToolCallParts())
    if part.id and not entry.id:
        entry.id = part.id
    function = part.function
    if function is None:
        return
    if function.name and function.name != entry.name:
        # Usually the name arrives whole in the first fragment; some servers repeat it.
        entry.name = function.name if not entry.name else entry.name + function.name
    if function.arguments:
        entry.arguments += function.arguments


def _usage(raw: Any) -> dict[str, Any]:
    prompt = getattr(raw, "prompt_tokens", None) or 0
    completion = getattr(raw, "completion_tokens", None) or 0
    total = getattr(raw, "total_tokens", None) or (prompt + completion)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
