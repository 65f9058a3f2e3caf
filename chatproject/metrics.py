"""Prometheus metrics (`/metrics`), on prometheus_client, the reference client library."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

HTTP_REQUESTS = Counter("chat_http_requests_total", "HTTP requests", ["method", "status"])
HTTP_LATENCY = Histogram("chat_http_request_seconds", "HTTP request latency", ["method"])
TURNS_STARTED = Counter("chat_turns_started_total", "Assistant replies started")
REPLIES_FINISHED = Counter("chat_replies_finished_total", "Assistant replies finished", ["status"])
DELTA_FRAMES = Counter("chat_delta_frames_total", "message.delta frames made (each written to every socket of its session)")
FRAMES_COALESCED = Counter("chat_frames_coalesced_total", "Deltas joined into an earlier frame for a socket whose connection was full")
ACTIVE_REPLIES = Gauge("chat_active_replies", "Replies streaming in this process")
FINAL_SAVE_RETRIES = Counter("chat_final_save_retries_total", "Saves of a reply's end retried because the database was away")
SOCKETS_TOO_FAR_BEHIND = Counter("chat_sockets_too_far_behind_total", "Sockets closed (4408) because their unsent output passed WS_MAX_UNSENT_BYTES")
OPEN_SOCKETS = Gauge("chat_open_sockets", "WebSockets open in this process")
DB_QUEUE_SECONDS = Histogram(
    "chat_db_queue_seconds", "Time a step waited for a database thread", ["pool", "step"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DB_STEP_SECONDS = Histogram(
    "chat_db_step_seconds", "Time a step ran on a database thread", ["pool", "step"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TURN_START_SECONDS = Histogram("chat_turn_start_seconds", "From a user message on a socket to its turn committed", buckets=_LATENCY)
FIRST_DELTA_SECONDS = Histogram("chat_first_delta_seconds", "From a reply's start to its first words handed to the sockets", buckets=_LATENCY)
BATCH_SIZE = Histogram(
    "chat_batch_size", "Requests carried out by one transaction (group commit), by step", ["step"], buckets=(1, 2, 5, 10, 20, 50, 100),
)
CHECKPOINT_SECONDS = Histogram("chat_checkpoint_seconds", "One checkpoint of every running reply of the process")
CHECKPOINT_FAILURES = Counter("chat_checkpoint_failures_total", "Checkpoints that failed (the next one catches up)")
BUS_PUBLISH_SECONDS = Histogram(
    "chat_bus_publish_seconds", "One pipeline of frames to Redis", buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
BUS_FRAMES = Counter("chat_bus_frames_total", "Frames across processes (out, in, dropped)", ["direction"])
BUS_ROUNDTRIP_SECONDS = Histogram(
    "chat_bus_roundtrip_seconds", "A probe published to Redis until this process received it back (every few seconds): the way across processes",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
BUS_RECONNECTS = Counter("chat_bus_reconnects_total", "Links to Redis made again after a loss (every socket of the process was sent a fresh session.ready)")
FRAMES_DROPPED = Counter(
    "chat_frames_dropped_total", "Frames that did not reach their sockets (bus: a publish to Redis failed; too_far_behind: held for a socket "
    "closed with 4408; write_failed: writing to a socket failed); clients catch up from session.ready", ["reason"],
)
FINAL_SAVE_SECONDS = Histogram("chat_final_save_seconds", "One save of a reply's end (waiting for its group commit included)", buckets=_LATENCY)
FINAL_SAVE_FAILURES = Counter("chat_final_save_failures_total", "Saves of a reply's end that failed and are tried again", ["reason"])
REPLIES_INTERRUPTED = Counter(
    "chat_replies_interrupted_total", "Replies ended `interrupted`, by cause (shutdown: this process stopped while they ran, after "
    "its drain; process_gone: found by this process, their own gone)", ["cause"],
)
DRAINING = Gauge("chat_draining", "1 while this process drains (SIGTERM): no new turns or sockets, running work ends")
# Every label value from the start, so a rate over a series that never moved is 0, not missing.
for _reason in ("bus", "too_far_behind", "write_failed"):
    FRAMES_DROPPED.labels(_reason)
for _reason in ("database_away", "error"):
    FINAL_SAVE_FAILURES.labels(_reason)
for _cause in ("shutdown", "process_gone"):
    REPLIES_INTERRUPTED.labels(_cause)


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


class RequestMetricsMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):  # type: ignore[no-untyped-def]
        if iscoroutinefunction(self.get_response):
            return self._acall(request)
        start = time.perf_counter()
        response = self.get_response(request)
        self._record(request, response, start)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        start = time.perf_counter()
        response = await self.get_response(request)
        self._record(request, response, start)
        return response

    @staticmethod
    def _record(request: HttpRequest, response: HttpResponse, start: float) -> None:
        # Label values come from a fixed set: clients must not be able to create series.
        method = request.method if request.method in _METHODS else "other"
        HTTP_REQUESTS.labels(method, str(response.status_code)).inc()
        HTTP_LATENCY.labels(method).observe(time.perf_counter() - start)


def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            response = HttpResponse("A bearer token is needed (METRICS_TOKEN).\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
