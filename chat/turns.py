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


async def advance(reply_id: uuid.UUID, step: Any = None) -> None:
    """Drive the reply's tool calls on until they wait for someone, then continue the turn.

    `step` is a step already taken (and committed) by the caller, to be driven from here.
    """
    from chat import agentic, streaming

    while True:
        if step is None:
            step = await database_sync_to_async(agentic.advance_step)(reply_id=reply_id)
        if step.action == "run":
            call_id = step.call_id
            # Tools may be slow (network): they run on a worker thread, not the shared DB thread.
            output, is_error = await sync_to_async(_run_tool_in_thread, thread_sensitive=False)(call_id)
            try:
                step = await database_sync_to_async(agentic.tool_call_complete)(call_id=call_id, output=output, is_error=is_error)
            except Exception:
                logger.exception("Saving the result of tool call %s failed", call_id)
                step = await database_sync_to_async(agentic.tool_call_fail)(call_id=call_id, reason="The result could not be saved.")
            continue
        if step.action == "continue" and step.message_id is not None:
            await streaming.run_reply(step.message_id)
        return


async def after_reply(message_id: uuid.UUID, status: str, had_tool_calls: bool) -> None:
    if status == "complete" and had_tool_calls:
        await advance(message_id)


async def run_plan(plan_id: uuid.UUID) -> None:
    """Run an approved plan's steps in order, each a reply by its agent; the plan ends at the first that fails.

    Safe to call for a plan whose driver died (see `agentic.stalled_plans`): each step is
    decided under the plan's lock, and a plan driven by a live process is left to it.
    """
    from chat import agentic, streaming

    while True:
        message_id = await database_sync_to_async(agentic.plan_step_next)(plan_id=plan_id)
        if message_id is None:
            return
        await streaming.run_reply(message_id)
