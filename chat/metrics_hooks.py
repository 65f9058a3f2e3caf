"""Counters the streaming code bumps; kept apart so the hot path stays one attribute call."""

from __future__ import annotations

from chatproject import metrics


def delta_sent() -> None:
    metrics.DELTA_FRAMES.inc()


def reply_started() -> None:
    metrics.TURNS_STARTED.inc()
    metrics.ACTIVE_REPLIES.inc()


def reply_finished(status: str) -> None:
    metrics.ACTIVE_REPLIES.dec()
    metrics.REPLIES_FINISHED.labels(status).inc()
