"""The orchestrator's choice of agent for a request.

Deterministic and offline: `/plan` goes to the orchestrator; `/tool NAME` to an agent that has
that tool; anything else to the agent whose description shares the most words with the request.
"""

from __future__ import annotations

import re

from chat.models import Agent

_WORD = re.compile(r"[a-z][a-z+#]{2,}")
_STOP = {"the", "and", "for", "with", "this", "that", "are", "you", "your", "please", "can", "what", "how", "why", "from", "about"}


def _words(text: str) -> set[str]:
    return {w.rstrip("s") for w in _WORD.findall(text.lower()) if w not in _STOP}


def route(*, content: str, include_orchestrator: bool = True, agents: list[Agent] | None = None) -> Agent | None:
    """The agent for `content` among `agents` (the active agents, in creation order; read here when not given)."""
    if agents is None:
        agents = list(Agent.objects.filter(is_active=True).order_by("pk"))
    stripped = content.strip()
    if include_orchestrator and re.match(r"^/plan(\s|$)", stripped) is not None:
        return next((a for a in agents if a.is_orchestrator), None)
    workers = [a for a in agents if not a.is_orchestrator]
    tool = re.match(r"^/tool\s+([\w.-]+)", stripped)
    if tool:
        return next((a for a in workers if tool.group(1) in (a.tools or [])), None)
    wanted = _words(stripped)
    best, best_score = None, 0
    for agent in workers:
        score = len(wanted & _words(f"{agent.name} {agent.description}"))
        if score > best_score:
            best, best_score = agent, score
    return best
