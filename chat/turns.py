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
            await streaming.run_reply(step.message_id)  # its end moves the turn (and its plan) on
        elif step.action == "done" and step.plan_id is not None:
            await run_plan(step.plan_id)
        return


async def after_reply(message_id: uuid.UUID, status: str, had_tool_calls: bool, plan_id: str | None = None) -> None:
    """What follows a reply: its tool calls, or, at the end of a plan step, the plan's next step."""
    if status == "complete" and had_tool_calls:
        await advance(message_id)
    elif plan_id:
        await run_plan(uuid.UUID(str(plan_id)))


async def run_plan(plan_id: uuid.UUID) -> None:
    """Start the approved plan's next step (each a reply by its agent); the end of that step starts the next.

    A step ends when its reply, with its tools and their continuation, ends; the plan ends
    `done` after its last step and `failed` at the first that did not complete (see
    `agentic.plan_step_next`, which decides under the plan's lock, so a second driver, or a
    takeover after a crash, does no harm).
    """
    from chat import agentic, streaming

    try:
        message_id = await database_sync_to_async(agentic.plan_step_next)(plan_id=plan_id)
    except Exception:
        # The heartbeat's sweep finds the plan standing still and drives it again.
        logger.exception("The next step of plan %s could not start", plan_id)
        return
    if message_id is not None:
        await streaming.run_reply(message_id)
