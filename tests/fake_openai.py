"""A small OpenAI-compatible chat completions server for tests.

It listens on 127.0.0.1 on a free port and answers `POST /v1/chat/completions` with
`text/event-stream` chunks in OpenAI's format (`data: {json}` blocks, then `data: [DONE]`),
sent with chunked transfer encoding as real servers do, so a dropped connection is seen
as one. The requested model name picks the scenario (see `SCENARIOS`); every request is
recorded in `requests`.

    with FakeOpenAI() as fake:
        agent = Agent(provider="openai", base_url=fake.url + "/v1", model="text")
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

TEXT_PIECES = ["Hello", " there", ", this is", " the fake", " model."]
TEXT = "".join(TEXT_PIECES)
USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
CALCULATOR_CALL_ID = "call_calc_1"

SCENARIOS = {
    "text": "plain text in several chunks, then a usage chunk when asked for",
    "tool-call": "one tool call whose arguments arrive in fragments",
    "two-tools": "some text, then two tool calls in one reply",
    "calculator-round": "some text and a calculator call; once the request carries its result, text that quotes it",
    "bad-arguments": "a tool call whose arguments are not valid JSON",
    "mid-error": "some text, then an error event inside the stream",
    "mid-error-object": "some text, then an error object as vLLM sends it",
    "mid-drop": "some text, then the connection is dropped",
    "hang": "headers and the role chunk, then nothing",
    "hang-no-headers": "the request is read and never answered",
    "stall": "some text, then nothing",
    "thinking": "reasoning chunks for a while (no content), then text",
    "approval-and-calculator": "a webhook_post call (needs approval) and a calculator call in one reply",
    "webhook-round": "a webhook_post call to the URL in the last user message; once its result is back, text",
    "bad-tool-characters": "a calculator call whose arguments hold a NUL character; once its result is back, text",
    "bad-characters": "text with a NUL character and a lone surrogate, as a broken model may send",
    "slow": "many text chunks, 0.05 s apart",
    "paced": "the plain text's chunks 0.05 s apart, then a usage chunk when asked for",
    "unauthorized": "401",
    "missing-model": "404",
    "rate-limited-once": "429 on the first request, then text",
    "server-error": "500 every time",
    "drop-once": "the first connection is closed before any answer, then text",
    "no-stream-options": "400 when stream_options is sent, text otherwise",
}


def _chunk(model: str, delta: dict[str, Any] | None = None, finish: str | None = None, usage: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = USAGE
    return body


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        # Models whose client went away while the server was still streaming to it.
        self.disconnects: list[str] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="fake-openai", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, request: dict[str, Any]) -> int:
        """Store a request; return how many requests for its model came before it."""
        with self._lock:
            self.requests.append(request)
            model = str(request["body"].get("model", ""))
            seen = self.counts[model]
            self.counts[model] += 1
            return seen

    @property
    def last_body(self) -> dict[str, Any]:
        return self.requests[-1]["body"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that go away mid-answer are part of the scenarios, not failures of the server.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # Plumbing ----------------------------------------------------------------------

    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, headers)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write(self, raw: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
        self.wfile.flush()

    def _event(self, body: dict[str, Any] | str) -> None:
        data = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
        self._write(f"data: {data}\n\n".encode())

    def _end_stream(self) -> None:
        self._event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _drop(self) -> None:
        """Close the connection in the middle of the body."""
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    # Scenarios ---------------------------------------------------------------------

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        fake = self.server_fake
        seen = fake.record({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"Unknown path {self.path}", "invalid_request_error")
            return
        model = str(body.get("model", ""))
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        try:
            self._answer(model, seen, usage, body)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            fake.disconnects.append(model)
            self.close_connection = True

    def _answer(self, model: str, seen: int, usage: bool, body: dict[str, Any]) -> None:
        fake = self.server_fake
        if model == "unauthorized":
            self._error(401, "Incorrect API key provided: sk-fake***1234.", "invalid_request_error", "invalid_api_key")
        elif model == "missing-model":
            self._error(404, f"The model `{model}` does not exist.", "invalid_request_error", "model_not_found")
        elif model == "rate-limited-once" and seen == 0:
            self._error(429, "Rate limit reached.", "requests", "rate_limit_exceeded", {"Retry-After": "0"})
        elif model == "server-error":
            self._error(500, "The server had an error while processing your request.", "server_error")
        elif model == "drop-once" and seen == 0:
            self._drop()
        elif model == "no-stream-options" and "stream_options" in body:
            self._error(400, "Unrecognized request argument supplied: stream_options", "invalid_request_error")
        elif model == "hang-no-headers":
            fake.release.wait()
        elif model in ("hang", "stall"):
            self._start_stream()
            self._event(_chunk(model, {"role": "assistant", "content": ""}))
            if model == "stall":
                self._event(_chunk(model, {"content": "Partial"}))
            fake.release.wait()
        else:
            self._start_stream()
            for event in self._events(model, usage, body):
                if event == "drop":
                    self._drop()
                    return
                if isinstance(event, float):
                    time.sleep(event)
                    continue
                self._event(event)
            self._end_stream()

    def _events(self, model: str, usage: bool, body: dict[str, Any]) -> Iterator[dict[str, Any] | str | float]:
        yield _chunk(model, {"role": "assistant", "content": ""})
        results = [m for m in body.get("messages") or [] if m.get("role") == "tool"]
        if model == "calculator-round" and not results:
            yield _chunk(model, {"content": "Let me calculate."})
            yield _chunk(model, {"tool_calls": [{"index": 0, "id": CALCULATOR_CALL_ID, "type": "function", "function": {"name": "calculator", "arguments": ""}}]})
            for piece in ['{"expression":', ' "2*(3+4)"}']:
                yield _chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            yield _chunk(model, {}, "tool_calls")
        elif model == "calculator-round":
            try:
                result = json.loads(results[-1]["content"])["result"]
            except (ValueError, KeyError, TypeError):
                result = "unknown"
            for piece in ["The calculator", f" says {result}", "."]:
                yield _chunk(model, {"content": piece})
            yield _chunk(model, {}, "stop")
        elif model == "tool-call":
            yield _chunk(model, {"tool_calls": [{"index": 0, "id": "call_abc", "type": "function", "function": {"name": "calculator", "arguments": ""}}]})
            for piece in ['{"expr', 'ession": "2*', '(3+4)"', "}"]:
                yield _chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            yield _chunk(model, {}, "tool_calls")
        elif model == "two-tools":
            yield _chunk(model, {"content": "Let me check both."})
            yield _chunk(model, {"tool_calls": [{"index": 0, "id": "call_one", "type": "function", "function": {"name": "get_time", "arguments": ""}}]})
            for piece in ['{"timezone":', ' "Europe/Paris"}']:
                yield _chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            yield _chunk(model, {"tool_calls": [{"index": 1, "id": "call_two", "type": "function", "function": {"name": "calculator", "arguments": ""}}]})
            for piece in ['{"expression"', ': "1+1"}']:
                yield _chunk(model, {"tool_calls": [{"index": 1, "function": {"arguments": piece}}]})
            yield _chunk(model, {}, "tool_calls")
        elif model == "bad-arguments":
            yield _chunk(model, {"tool_calls": [{"index": 0, "id": "call_bad", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": '}}]})
            yield _chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": "2*(3"}}]})
            yield _chunk(model, {}, "tool_calls")
        elif model == "mid-error":
            yield _chunk(model, {"content": "Partial"})
            yield _chunk(model, {"content": " answer"})
            yield {"error": {"message": "The server overloaded while generating.", "type": "server_error", "param": None, "code": None}}
            return
        elif model == "mid-error-object":
            yield _chunk(model, {"content": "Partial"})
            yield {"object": "error", "message": "Engine loop has died", "type": "InternalServerError", "param": None, "code": 500}
            return
        elif model == "mid-drop":
            yield _chunk(model, {"content": "Partial"})
            yield _chunk(model, {"content": " answer"})
            yield 0.05
            yield "drop"
            return
        elif model == "approval-and-calculator" and not results:
            yield _chunk(model, {"content": "Two things first."})
            yield _chunk(model, {"tool_calls": [{"index": 0, "id": "call_hook", "type": "function", "function": {
                "name": "webhook_post", "arguments": '{"url": "http://127.0.0.1:9/hook", "payload": {"n": 1}}'}}]})
            yield _chunk(model, {"tool_calls": [{"index": 1, "id": "call_calc", "type": "function", "function": {
                "name": "calculator", "arguments": '{"expression": "1+1"}'}}]})
            yield _chunk(model, {}, "tool_calls")
        elif model == "webhook-round" and not any(m.get("tool_call_id") == "call_step_hook" for m in results):
            prompt = next((m.get("content") or "" for m in reversed(body.get("messages") or []) if m.get("role") == "user"), "")
            url = re.search(r"http://127\.0\.0\.1:\d+/hook", prompt)
            arguments = json.dumps({"url": url.group(0) if url else "http://127.0.0.1:9/hook", "payload": {"from": "step"}})
            yield _chunk(model, {"tool_calls": [{"index": 0, "id": "call_step_hook", "type": "function", "function": {
                "name": "webhook_post", "arguments": arguments}}]})
            yield _chunk(model, {}, "tool_calls")
        elif model == "webhook-round":
            yield _chunk(model, {"content": "Posted."})
            yield _chunk(model, {}, "stop")
        elif model == "bad-tool-characters" and not results:
            yield _chunk(model, {"tool_calls": [{"index": 0, "id": "call_nul", "type": "function", "function": {
                "name": "calculator", "arguments": '{"expression": "2*3\\u0000"}'}}]})
            yield _chunk(model, {}, "tool_calls")
        elif model == "bad-tool-characters":
            yield _chunk(model, {"content": "Computed."})
            yield _chunk(model, {}, "stop")
        elif model == "bad-characters":
            for piece in ["Null\u0000 byte", " and a lone \ud800", " surrogate."]:
                yield _chunk(model, {"content": piece})
            yield _chunk(model, {}, "stop")
        elif model == "thinking":
            for _ in range(6):
                yield _chunk(model, {"reasoning_content": "hmm "})
                yield 0.15
            yield _chunk(model, {"content": "Thought it through."})
            yield _chunk(model, {}, "stop")
        elif model == "paced":
            for piece in TEXT_PIECES:
                yield _chunk(model, {"content": piece})
                yield 0.05
            yield _chunk(model, {}, "stop")
        elif model == "slow":
            for i in range(200):
                yield _chunk(model, {"content": f"chunk {i} "})
                yield 0.05
            yield _chunk(model, {}, "stop")
        else:
            for piece in TEXT_PIECES:
                yield _chunk(model, {"content": piece})
            yield _chunk(model, {}, "stop")
        if usage:
            yield _chunk(model, usage=True)
