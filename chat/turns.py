"""The async side of a turn: what a reply does with the provider's events, and what follows it."""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.db import close_old_connections

from chat.providers import Provider, ReplyContext

if TYPE_CHECKING:
    from chat.streaming import ReplyRun

logger = logging.getLogger(__name__)


async def consume(run: ReplyRun, ctx: ReplyContext, provider: Provider, metadata: dict[str, Any]) -> None:
    # aclosing: however the loop ends (cancel, an error, the length limit), the provider's
    # stream is closed at once, so its HTTP request stops and the model stops generating.
    async with contextlib.aclosing(provider.stream(ctx)) as stream:
        async for event in stream:
            _take(run, event, metadata)


def _take(run: ReplyRun, event: Any, metadata: dict[str, Any]) -> None:
    if event.kind == "text":
        run.append(event.text)
    elif event.kind == "usage":
        metadata["usage"] = event.data
    elif event.kind == "tool_call":
        run.tool_calls.append(event.data)


def _run_tool_in_thread(call_id: uuid.UUID) -> tuple[Any, bool]:
    from chat import agentic

    try:
        return agentic.tool_run(call_id=call_id)
    except Exception:
        logger.exception("Tool call %s raised", call_id)
        return {"error": "The tool failed because of an internal error."}, True
    finally:
        close_old_connections()


async def advance(reply_id: uuid.UUID) -> None:
    """Drive the reply's tool calls on until they wait for someone, then continue the turn."""
    from chat import agentic, streaming

    while True:
        step = await database_sync_to_async(agentic.advance_step)(reply_id=reply_id)
        if step.action == "run":
            # Tools may be slow (network): they run on a worker thread, not the shared DB thread.
            output, is_error = await sync_to_async(_run_tool_in_thread, thread_sensitive=False)(step.call_id)
            try:
                await database_sync_to_async(agentic.tool_call_complete)(call_id=step.call_id, output=output, is_error=is_error)
            except Exception:
                logger.exception("Saving the result of tool call %s failed", step.call_id)
                await database_sync_to_async(agentic.tool_call_fail)(call_id=step.call_id, reason="The result could not be saved.")
            continue
        if step.action == "continue" and step.message_id is not None:
            await streaming.run_reply(step.message_id)
        return


async def after_reply(message_id: uuid.UUID, status: str, had_tool_calls: bool) -> None:
    if status == "complete" and had_tool_calls:
        await advance(message_id)


def _status_of(message_id: uuid.UUID) -> str | None:
    from chat.models import Message

    return Message.objects.filter(pk=message_id).values_list("status", flat=True).first()


async def run_plan(plan_id: uuid.UUID) -> None:
    """Run an approved plan's steps in order, each a reply by its agent; stop at the first that fails."""
    from chat import agentic, streaming
    from chat.models import Message, Plan

    while True:
        message_id = await database_sync_to_async(agentic.plan_step_start)(plan_id=plan_id)
        if message_id is None:
            await database_sync_to_async(agentic.plan_finish)(plan_id=plan_id, status=Plan.Status.DONE)
            return
        await streaming.run_reply(message_id)
        status = await database_sync_to_async(_status_of)(message_id)
        if status != Message.Status.COMPLETE:
            await database_sync_to_async(agentic.plan_finish)(plan_id=plan_id, status=Plan.Status.FAILED)
            return
