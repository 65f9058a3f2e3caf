"""The tool registry: what agents may call, where it runs, and whether a human must approve it.

Arguments are checked against each tool's JSON Schema (with `jsonschema`, the reference
implementation) before anything runs.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
from django.conf import settings
from rest_framework import serializers

from chat.models import Agent


class ToolError(Exception):
    """The tool could not do what was asked; the message goes back to the model as the tool's output."""


@dataclass(frozen=True)
class ToolContext:
    user_id: int
    session_id: str


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    runs_on: str = "server"  # "server" | "client"
    needs_approval: bool = False
    handler: Callable[[dict[str, Any], ToolContext], Any] | None = None

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


class ToolSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    runs_on = serializers.ChoiceField(choices=["server", "client"])
    needs_approval = serializers.BooleanField()
    parameters = serializers.JSONField()


# calculator ---------------------------------------------------------------------

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt, "sin": math.sin, "cos": math.cos, "tan": math.tan, "log": math.log, "log10": math.log10,
    "exp": math.exp, "abs": abs, "round": round, "min": min, "max": max, "floor": math.floor, "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
_MAX_INT_BITS = 3000  # about 900 digits: far beyond arithmetic anyone asks for, far below what stalls a process


def evaluate_expression(expression: str) -> float | int:
    """Arithmetic only: the expression is parsed into a syntax tree and walked; nothing is ever executed."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        raise ToolError(f"Not an arithmetic expression: {expression!r}") from None

    def walk(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and (abs(right) > 1000 or abs(left) > 1e100):
                raise ToolError("Exponent too large.")
            try:
                value = _BINARY[type(node.op)](left, right)
            except ZeroDivisionError:
                raise ToolError("Division by zero.") from None
            except OverflowError:
                raise ToolError("The result is too large.") from None
            if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
                raise ToolError("The result is too large.")
            return value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
            and len(node.args) <= 10
        ):
            try:
                return _FUNCTIONS[node.func.id](*[walk(arg) for arg in node.args])
            except (ValueError, TypeError, OverflowError) as exc:
                raise ToolError(f"{node.func.id}: {exc}") from None
        raise ToolError(f"Not allowed in an expression: {ast.unparse(node) if hasattr(ast, 'unparse') else type(node).__name__}")

    result = walk(tree)
    if isinstance(result, float) and not math.isfinite(result):
        raise ToolError("The result is not a finite number.")
    if isinstance(result, float) and result.is_integer() and abs(result) < 1e15:
        return int(result)
    return result


def _calculator(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    return {"expression": args["expression"], "result": evaluate_expression(args["expression"])}


def _current_time(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    name = args.get("timezone") or "UTC"
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"Unknown time zone: {name!r}") from None
    now = datetime.now(zone)
    return {"timezone": name, "iso": now.isoformat(timespec="seconds"), "weekday": now.strftime("%A")}


def _search_messages(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    from chat.models import Message

    limit = args.get("limit", 5)
    rows = (
        Message.objects.filter(session__owner_id=ctx.user_id, content__icontains=args["query"], type=Message.Type.TEXT)
        .order_by("-created_at")
        .values("session_id", "seq", "role", "content", "created_at")[:limit]
    )
    return {
        "query": args["query"],
        "matches": [
            {
                "session": str(r["session_id"]),
                "seq": r["seq"],
                "role": r["role"],
                "excerpt": r["content"][:300],
                "created_at": r["created_at"].isoformat(),
            }
            for r in rows
        ],
    }


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # an allowed host must not forward the request to one that is not


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


def _webhook_post(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    url = args["url"]
    parsed = urllib.parse.urlparse(url)
    allowed = settings.CHAT["WEBHOOK_ALLOWED_HOSTS"]
    if parsed.scheme not in ("http", "https") or (parsed.hostname or "") not in allowed:
        raise ToolError(f"Host not allowed: {parsed.hostname!r}. Allowed: {', '.join(allowed) or 'none'} (WEBHOOK_ALLOWED_HOSTS).")
    body = json.dumps(args.get("payload", {})).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with _NO_REDIRECTS.open(request, timeout=10) as response:
            text = response.read(4000).decode("utf-8", "replace")
            return {"status": response.status, "body": text}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read(4000).decode("utf-8", "replace")}
    except (urllib.error.URLError, TimeoutError) as exc:
        raise ToolError(f"The request failed: {exc}") from None


REGISTRY: dict[str, Tool] = {
    tool.name: tool
    for tool in [
        Tool(
            name="calculator",
            description="Evaluate an arithmetic expression (+ - * / // % **, parentheses, sqrt, sin, cos, log, pi, e).",
            parameters={
                "type": "object",
                "properties": {"expression": {"type": "string", "minLength": 1, "maxLength": 200}},
                "required": ["expression"],
                "additionalProperties": False,
            },
            handler=_calculator,
        ),
        Tool(
            name="current_time",
            description="The current date and time, in UTC or an IANA time zone such as Europe/Paris.",
            parameters={
                "type": "object",
                "properties": {"timezone": {"type": "string", "maxLength": 64}},
                "additionalProperties": False,
            },
            handler=_current_time,
        ),
        Tool(
            name="search_messages",
            description="Search the user's own earlier messages (all their sessions) for a phrase.",
            parameters={
                "type": "object",
                "properties": {
                    "query": {"type": "string", "minLength": 1, "maxLength": 200},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 20},
                },
                "required": ["query"],
                "additionalProperties": False,
            },
            handler=_search_messages,
        ),
        Tool(
            name="client_time",
            description="The local date, time and time zone of the user's device (runs in the client).",
            parameters={"type": "object", "properties": {}, "additionalProperties": False},
            runs_on="client",
        ),
        Tool(
            name="propose_plan",
            description="Propose a multi-step plan; each step is done by an agent once a person approves the plan.",
            parameters={
                "type": "object",
                "properties": {
                    "steps": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 10,
                        "items": {
                            "type": "object",
                            "properties": {
                                "agent": {"type": "string", "maxLength": 64},
                                "instruction": {"type": "string", "minLength": 1, "maxLength": 2000},
                            },
                            "required": ["instruction"],
                            "additionalProperties": False,
                        },
                    }
                },
                "required": ["steps"],
                "additionalProperties": False,
            },
        ),
        Tool(
            name="webhook_post",
            description="POST a JSON payload to an allowed URL (WEBHOOK_ALLOWED_HOSTS). Needs a human's approval.",
            parameters={
                "type": "object",
                "properties": {
                    "url": {"type": "string", "format": "uri", "maxLength": 500},
                    "payload": {"type": "object"},
                },
                "required": ["url"],
                "additionalProperties": False,
            },
            needs_approval=True,
            handler=_webhook_post,
        ),
    ]
}


def all_tools() -> list[Tool]:
    return list(REGISTRY.values())


def get_tool(name: str) -> Tool | None:
    return REGISTRY.get(name)


def tools_for_agent(agent: Agent | None) -> list[Tool]:
    if agent is None:
        return []
    return [REGISTRY[name] for name in (agent.tools or []) if name in REGISTRY]


def specs_for_agent(agent: Agent | None) -> list[dict[str, Any]]:
    return [tool.spec() for tool in tools_for_agent(agent)]


def validate_arguments(tool: Tool, arguments: Any) -> dict[str, Any]:
    """Raise ToolError with a readable message when the arguments do not fit the tool's schema."""
    if not isinstance(arguments, dict):
        raise ToolError(f"{tool.name}: arguments must be a JSON object.")
    validator = jsonschema.Draft202012Validator(tool.parameters)
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "arguments"
        raise ToolError(f"{tool.name}: invalid {where}: {first.message}")
    return arguments


def run_server_tool(tool: Tool, arguments: dict[str, Any], ctx: ToolContext) -> Any:
    assert tool.handler is not None and tool.runs_on == "server"
    return tool.handler(arguments, ctx)
