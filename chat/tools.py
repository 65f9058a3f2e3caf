"""The tool registry: what agents may call, where it runs, and whether a human must approve it.

Arguments are checked against each tool's JSON Schema (with `jsonschema`, the reference
implementation) before anything runs.
"""

from __future__ import annotations

import ast
import http.client
import ipaddress
import json
import math
import operator
import socket
import ssl
import urllib.parse
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
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
# Every integer an expression makes, operand or result, stays within this many bits (about 900
# digits): far beyond arithmetic anyone asks for, and small enough that every operation on such
# numbers takes microseconds. The cost of an operation is bounded *before* it runs: Python cannot
# be interrupted inside one big-integer operation, and the evaluation holds the process's GIL.
_MAX_INT_BITS = 3000
_MAX_ROUND_DIGITS = 300  # round(x, n): |n| beyond this only pads zeros (and round(1, -10**9) is 10**(10**9) work)
Number = int | float


def _bits(value: Number) -> int:
    return value.bit_length() if isinstance(value, int) else 0


def _check_binary(op: ast.operator, left: Number, right: Number) -> None:
    """Refuse an operation whose result could outgrow the bound, before computing it."""
    if isinstance(op, ast.Pow):
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if (abs(left).bit_length() - 1) * right > _MAX_INT_BITS:
                raise ToolError("The result is too large.")
        elif abs(right) > 10_000:
            raise ToolError("Exponent too large.")
    elif isinstance(op, ast.Mult) and isinstance(left, int) and isinstance(right, int) and _bits(left) + _bits(right) > _MAX_INT_BITS + 1:
        raise ToolError("The result is too large.")


def _round(value: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(value)
    if not isinstance(ndigits, int):
        raise ToolError("round: the number of digits must be an integer.")
    if abs(ndigits) > _MAX_ROUND_DIGITS:
        raise ToolError(f"round: the number of digits must be between -{_MAX_ROUND_DIGITS} and {_MAX_ROUND_DIGITS}.")
    return round(value, ndigits)


# name -> (function, least arguments, most arguments)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    "sqrt": (math.sqrt, 1, 1), "sin": (math.sin, 1, 1), "cos": (math.cos, 1, 1), "tan": (math.tan, 1, 1),
    "log": (math.log, 1, 2), "log10": (math.log10, 1, 1), "exp": (math.exp, 1, 1), "abs": (abs, 1, 1),
    "round": (_round, 1, 2), "min": (min, 1, 10), "max": (max, 1, 10), "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
}


def _checked(value: Any) -> Number:
    """Every value an expression makes is a real int or float within the bound (no complex, no bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToolError("The result is not a real number.")
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise ToolError("The result is too large.")
    return value


def evaluate_expression(expression: str) -> Number:
    """Arithmetic only: the expression is parsed into a syntax tree and walked; nothing is ever executed.

    Bounded in cost, not only in shape: every integer operand and result stays within
    `_MAX_INT_BITS`, a power is refused before it is computed when its result would not, and every
    function checks its arguments (`round`'s digits above all), so any expression of the schema's
    200 characters answers in well under a millisecond, with a result or a `ToolError`.
    """
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise ToolError(f"Not an arithmetic expression: {expression!r}") from None

    def walk(node: ast.AST) -> Number:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return _checked(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            _check_binary(node.op, left, right)
            try:
                return _checked(_BINARY[type(node.op)](left, right))
            except ZeroDivisionError:
                raise ToolError("Division by zero.") from None
            except OverflowError:
                raise ToolError("The result is too large.") from None
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS and not node.keywords:
            function, least, most = _FUNCTIONS[node.func.id]
            if not least <= len(node.args) <= most:
                raise ToolError(f"{node.func.id} takes {least}" + (f" to {most}" if most > least else "") + " argument(s).")
            args = [walk(arg) for arg in node.args]
            try:
                return _checked(function(*args))
            except (ValueError, TypeError, OverflowError) as exc:
                raise ToolError(f"{node.func.id}: {exc}") from None
        raise ToolError(f"Not allowed in an expression: {ast.unparse(node)}")

    try:
        result = walk(tree)
    except RecursionError:
        raise ToolError("The expression is nested too deeply.") from None
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


_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, the port filled in from the scheme; ValueError if it has none."""
    parsed = urllib.parse.urlsplit(url.strip())
    scheme = parsed.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parsed.hostname:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    port = parsed.port  # ValueError for a port that is not a number or out of range
    return scheme, parsed.hostname.lower().rstrip("."), port or _DEFAULT_PORTS[scheme]


def _origin_text(origin: tuple[str, str, int]) -> str:
    scheme, host, port = origin
    return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_loopback or address.is_private or address.is_link_local or address.is_multicast
        or address.is_reserved or address.is_unspecified
    )


def resolve_webhook_target(url: str) -> tuple[tuple[str, str, int], str]:
    """The allowed origin of `url` and the one address to connect to, or ToolError.

    The origin (scheme, host and port) must be in WEBHOOK_ALLOWED_ORIGINS. The host name is
    resolved once, here; every address it resolves to must be public (not loopback, private,
    link-local, multicast, reserved) unless it is in WEBHOOK_ALLOWED_NETWORKS or the allowed origin
    names that address itself. The caller connects to the address returned, so a second lookup
    (DNS rebinding) cannot move the request elsewhere.
    """
    try:
        origin = parse_origin(url)
    except ValueError:
        raise ToolError(f"Not an http(s) URL: {url!r}.") from None
    allowed = {parse_origin(entry) for entry in settings.CHAT["WEBHOOK_ALLOWED_ORIGINS"]}
    if origin not in allowed:
        listed = ", ".join(sorted(_origin_text(o) for o in allowed)) or "none"
        raise ToolError(f"Not allowed: {_origin_text(origin)}. Allowed: {listed} (WEBHOOK_ALLOWED_ORIGINS).")
    _scheme, host, port = origin
    literal = _ip_literal(host)
    if literal is not None:
        return origin, str(literal)  # an address the operator listed itself
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ToolError(f"Could not resolve {host!r}: {exc}") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    networks = [ipaddress.ip_network(n, strict=False) for n in settings.CHAT["WEBHOOK_ALLOWED_NETWORKS"]]
    for address in addresses:
        if not _public(address) and not any(address in network for network in networks):
            raise ToolError(
                f"{host!r} resolves to {address}, which is not a public address "
                "(list its network in WEBHOOK_ALLOWED_NETWORKS to allow it)."
            )
    if not addresses:
        raise ToolError(f"Could not resolve {host!r}.")
    return origin, str(addresses[0])


def _webhook_post(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    (scheme, host, port), address = resolve_webhook_target(args["url"])
    parsed = urllib.parse.urlsplit(args["url"].strip())
    target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    body = json.dumps(args.get("payload", {})).encode()
    if scheme == "https":
        # The certificate is checked against the host name (SNI too); only the TCP connection is pinned.
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=10, context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(host, port, timeout=10)
    # Connect to the address that was checked, not to a second lookup of the name.
    connection._create_connection = lambda _addr, timeout, source: socket.create_connection((address, port), timeout, source)  # type: ignore[attr-defined]
    default_port = _DEFAULT_PORTS[scheme]
    host_header = ("[" + host + "]" if ":" in host else host) + ("" if port == default_port else f":{port}")
    try:
        # http.client never follows a redirect: a 3xx comes back as it is.
        connection.request("POST", target, body=body, headers={"Host": host_header, "Content-Type": "application/json"})
        response = connection.getresponse()
        return {"status": response.status, "body": response.read(4000).decode("utf-8", "replace")}
    except (OSError, http.client.HTTPException) as exc:
        raise ToolError(f"The request failed: {exc}") from None
    finally:
        connection.close()


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
            description="POST a JSON payload to a URL whose origin an operator allowed (WEBHOOK_ALLOWED_ORIGINS). Needs a human's approval.",
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
