"""The offline demo provider: deterministic, no network (see the contract's "demo provider").

Plain text gets an answer in several deltas. Commands at the start of the message script it:
`/tool NAME {json}`, `/plan step one; step two`, `/slow N`, `/fail`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings

from chat.providers.base import ProviderError, ProviderEvent, ReplyContext

# `/slow N` at the start of the message; what follows it is ignored, as for every command.
_SLOW = re.compile(r"^/slow(?:\s+(\d+))?(?:\s|$)")
_TOOL = re.compile(r"^/tool\s+([\w.-]+)\s*(.*)$", re.DOTALL)
_LONG = re.compile(r"^/long(?:\s+(\d{1,7}))?(?:\s|$)")
LONG_MAX = 200_000
LONG_PIECE = 200  # characters a piece of /long (about a line)


def long_markdown(chars: int) -> str:
    """`chars` characters of Markdown: sections with a heading, paragraphs, a list and a code block, numbered."""
    parts: list[str] = []
    size, k = 0, 0
    while size < chars:
        k += 1
        section = (
            f"## Part {k}\n\n"
            f"This is paragraph one of part {k}. It has **bold** and *italic* words, `inline code` and a "
            f"[link](https://example.com/{k}) so that every kind of inline markup is rendered while the reply streams.\n\n"
            f"- first point of part {k}\n- second point, a little longer than the first\n- third point\n\n"
            f"```python\ndef part_{k}():\n    return {k} * {k}\n```\n\n"
            f"A closing paragraph for part {k}, plain text only, to give the renderer a block after the code.\n\n"
        )
        parts.append(section)
        size += len(section)
    return "".join(parts)[:chars]


def _words(text: str) -> list[str]:
    """Split into deltas that keep every character (words with their trailing space)."""
    return re.findall(r"\S+\s*|\s+", text)


def demo_reply_text(prompt: str, agent_name: str) -> str:
    snippet = " ".join(prompt.split())
    if len(snippet) > 200:
        snippet = snippet[:200] + "…"
    return (
        f'{agent_name} here (demo provider, offline). You wrote: "{snippet}". '
        "I answer deterministically so every flow can be tried without a model server. "
        'Try /slow 20, /fail, /tool calculator {"expression": "2*(3+4)"} or /plan research; summarise.'
    )


def _describe(output: Any) -> str:
    text = json.dumps(output, ensure_ascii=False, sort_keys=True) if not isinstance(output, str) else output
    return text if len(text) <= 300 else text[:299] + "…"


def _after_tools(results: list[dict[str, Any]]) -> str:
    parts = []
    for result in results:
        if result.get("status") == "rejected":
            parts.append(f"{result['name']} was not run: it was rejected.")
        elif result.get("is_error"):
            parts.append(f"{result['name']} failed: {_describe((result.get('output') or {}).get('error', result.get('output')))}")
        else:
            parts.append(f"{result['name']} returned {_describe(result.get('output'))}.")
    return "Here is what the tools said. " + " ".join(parts)


class DemoProvider:
    """Pieces come `delay` apart, the first at once (as a model's tokens do once it has started)."""

    async def _say(self, text: str, delay: float) -> AsyncIterator[ProviderEvent]:
        for i, piece in enumerate(_words(text)):
            if i:
                await asyncio.sleep(delay)
            yield ProviderEvent("text", piece)

    async def stream(self, ctx: ReplyContext) -> AsyncIterator[ProviderEvent]:
        prompt = ctx.prompt.strip()
        name = ctx.agent.name if ctx.agent else "Assistant"
        delay = settings.CHAT["DEMO_DELTA_DELAY"]
        if ctx.extra.get("continuation"):
            async for event in self._say(_after_tools(ctx.extra.get("tool_results", [])), delay):
                yield event
            return
        if ctx.extra.get("instruction"):
            text = f"Step {ctx.extra.get('step')} of {ctx.extra.get('steps')} ({name}): {ctx.extra['instruction']}. Done."
            async for event in self._say(text, delay):
                yield event
            return
        slow = _SLOW.match(prompt)
        if slow:
            count = min(max(int(slow.group(1) or 30), 1), 5000)
            for i in range(1, count + 1):
                if i > 1:
                    await asyncio.sleep(settings.CHAT["DEMO_SLOW_DELAY"])
                yield ProviderEvent("text", f"chunk {i} ")
            yield ProviderEvent("usage", data={"prompt_tokens": len(prompt.split()), "completion_tokens": count})
            return
        long = _LONG.match(prompt)
        if long:
            text = long_markdown(min(max(int(long.group(1) or 20_000), 1), LONG_MAX))
            for first in range(0, len(text), LONG_PIECE):
                if first:
                    await asyncio.sleep(delay)
                yield ProviderEvent("text", text[first : first + LONG_PIECE])
            yield ProviderEvent("usage", data={"prompt_tokens": len(prompt.split()), "completion_tokens": len(text) // 4})
            return
        if prompt == "/fail" or prompt.startswith("/fail "):
            async for event in self._say("Starting to answer, then the demo provider fails", delay):
                yield event
            raise ProviderError("The demo provider failed (requested with /fail).")
        tool = _TOOL.match(prompt)
        if tool:
            call: dict[str, Any] = {"id": "demo-call-1", "name": tool.group(1), "arguments": {}}
            raw = tool.group(2).strip() or "{}"
            try:
                call["arguments"] = json.loads(raw)
            except ValueError as exc:
                call["arguments_error"] = {"raw": raw, "reason": str(exc)}
            async for event in self._say(f"Calling {tool.group(1)}.", delay):
                yield event
            yield ProviderEvent("tool_call", data=call)
            return
        if re.match(r"^/plan(\s|$)", prompt):
            steps = [s.strip() for s in prompt[len("/plan") :].split(";") if s.strip()]
            if not ctx.agent or not ctx.agent.is_orchestrator:
                text = "Plans are proposed by the orchestrator: switch the session to orchestrated mode to get one."
            elif not steps:
                text = "Give the steps after /plan, separated by semicolons."
            else:
                text = f"Here is a plan in {len(steps)} steps. Approve it to start, or reject it."
            async for event in self._say(text, delay):
                yield event
            if steps and ctx.agent and ctx.agent.is_orchestrator:
                yield ProviderEvent(
                    "tool_call",
                    data={"id": "demo-plan-1", "name": "propose_plan", "arguments": {"steps": [{"instruction": s} for s in steps]}},
                )
            return
        pieces = _words(demo_reply_text(prompt, name))
        async for event in self._say(demo_reply_text(prompt, name), delay):
            yield event
        yield ProviderEvent("usage", data={"prompt_tokens": len(prompt.split()), "completion_tokens": len(pieces)})
