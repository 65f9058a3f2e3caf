"""What follows a reply: its tool calls, their continuation, the next step of a plan.

The sync steps (chat.turn.agentic) decide under the session lock and say what runs next; this
module runs it: a server tool on a tool thread, a continuation or a plan step as a reply, and
then whatever that reply leads to, until the turn waits for someone or ends.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import close_old_connections

from chat.engine.replies import Ended, Replies, Steps
from chat.turn import agentic
from chat.turn.context import ReplyContext

logger = logging.getLogger(__name__)

# Tools may be slow (network): they run on their own threads, never on the database threads.
_tools = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tool")


def _run_tool(call_id: uuid.UUID) -> tuple[Any, bool]:
    try:
        return agentic.tool_run(call_id=call_id)
    except Exception:
        logger.exception("Tool call %s raised", call_id)
        return {"error": "The tool failed because of an internal error."}, True
    finally:
        close_old_connections()


class Driver:
    def __init__(self, replies: Replies, steps: Steps) -> None:
        self.replies = replies
        self.steps = steps

    async def reply(self, message_id: uuid.UUID, ctx: ReplyContext | None = None) -> None:
        """Stream a reply, then take its turn on (tools, continuation, plan)."""
        ended = await self.replies.stream(message_id, ctx)
        if ended is not None:
            await self.follow(ended)

    async def follow(self, ended: Ended) -> None:
        if ended.status == "complete" and ended.advance:
            await self.advance(ended.message_id)
        elif ended.plan_id:
            await self.run_plan(uuid.UUID(str(ended.plan_id)))

    async def advance(self, reply_id: uuid.UUID, step: agentic.Step | None = None) -> None:
        """Drive the reply's tool calls on until they wait for someone, then continue the turn.

        `step` is a step already taken (and committed) by the caller, to be driven from here.
        """
        loop = asyncio.get_running_loop()
        while True:
            if step is None:
                step = await self.steps.write(agentic.advance_step, reply_id=reply_id)
            if step.action == "run":
                call_id = step.call_id
                output, is_error = await loop.run_in_executor(_tools, _run_tool, call_id)
                try:
                    step = await self.steps.write(agentic.tool_call_complete, call_id=call_id, output=output, is_error=is_error)
                except Exception:
                    logger.exception("Saving the result of tool call %s failed", call_id)
                    step = await self.steps.write(agentic.tool_call_fail, call_id=call_id, reason="The result could not be saved.")
                continue
            if step.action == "continue" and step.message_id is not None:
                await self.reply(step.message_id)  # its end moves the turn (and its plan) on
            elif step.action == "done" and step.plan_id is not None:
                await self.run_plan(step.plan_id)
            return

    async def run_plan(self, plan_id: uuid.UUID) -> None:
        """Start the approved plan's next step (each a reply by its agent); the end of that step starts the next.

        A step ends when its reply, with its tools and their continuation, ends; the plan ends
        `done` after its last step and `failed` at the first that did not complete (see
        `agentic.plan_step_next`, which decides under the plan's lock, so a second driver, or a
        takeover after a crash, does no harm).
        """
        try:
            message_id = await self.steps.write(agentic.plan_step_next, plan_id=plan_id)
        except Exception:
            # The heartbeat's sweep finds the plan standing still and drives it again.
            logger.exception("The next step of plan %s could not start", plan_id)
            return
        if message_id is not None:
            await self.reply(message_id)

    async def resume_stalled(self) -> list[Any]:
        """Coroutines that pick up turns a dead process left half-way: lost tool calls, unmoved calls, running plans."""
        work: list[Any] = []
        for call_id, reply_id in await self.steps.read(agentic.lost_calls):
            step = await self.steps.write(
                agentic.tool_call_fail, call_id=call_id, reason="The server stopped while this tool ran; it may or may not have finished."
            )
            if step.action in ("run", "continue"):
                work.append(self.advance(reply_id, step))
        for reply_id in await self.steps.read(agentic.stalled_replies):
            work.append(self.advance(reply_id))
        for plan_id in await self.steps.read(agentic.stalled_plans):
            work.append(self.run_plan(plan_id))
        return work
