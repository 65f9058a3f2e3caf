"""Tool calls, approvals and plans: the persisted state machine of an agent's turn.

A reply whose model asked for tools ends `complete`; its calls are rows (`ToolCall`) that move
requested → (awaiting_approval → approved | rejected) | awaiting_client → running → done | failed.
Each step is one short transaction that locks the rows it moves, so a decision counts once,
in whichever process and on whichever socket it arrives, and a side effect never repeats.
When every call of a reply has ended, one continuation reply (same `reply_to`) streams the answer.

Lock order: every step locks the session row first (`chat.turn.locking`), then the rows it
moves, and passes the locked session down. One order everywhere means two steps of one
session never deadlock; they queue. A step returns what runs next (a `Step`), or records it
in the outbox (`chat.turn.outbox`): it never starts a task itself.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from chat import events, routing, tools
from chat.exceptions import ChatError, InvalidInput, NotFound
from chat.models import Agent, Approval, Message, Plan, ToolCall
from chat.serializers import message_data
from chat.turn import liveness, outbox
from chat.turn.locking import LockedSession, lock_session, session_step
from chat.validation import storable_json, storable_text

ENDED = (ToolCall.Status.DONE, ToolCall.Status.FAILED, ToolCall.Status.REJECTED, ToolCall.Status.SUPERSEDED)
MAX_TOOL_ROUNDS = 5
MAX_OUTPUT_CHARS = 20000


class AlreadyDecided(ChatError):
    code = "already_decided"
    status = 409


# Frames -------------------------------------------------------------------------------


def tool_call_frame(call: ToolCall) -> dict[str, Any]:
    return {
        "type": "tool.call",
        "tool_call_id": str(call.pk),
        "message_id": str(call.message_id) if call.message_id else None,
        "name": call.name,
        "arguments": call.arguments,
    }


def approval_frame(approval: Approval) -> dict[str, Any]:
    return {
        "type": "approval.requested",
        "approval_id": str(approval.pk),
        "message_id": str(approval.message_id) if approval.message_id else None,
        "tool": approval.tool_call.name,
        "arguments": approval.tool_call.arguments,
    }


def plan_frame(plan: Plan) -> dict[str, Any]:
    return {
        "type": "plan.proposed",
        "plan_id": str(plan.pk),
        "message_id": str(plan.message_id) if plan.message_id else None,
        "steps": plan.steps,
    }


def pending_items(*, session_id: uuid.UUID) -> list[dict[str, Any]]:
    """What waits for the client or a person: `session.ready.pending`. Three queries."""
    items: list[dict[str, Any]] = []
    for call in ToolCall.objects.filter(session_id=session_id, status=ToolCall.Status.AWAITING_CLIENT).order_by("created_at"):
        items.append({"kind": "tool_call", **_without_type(tool_call_frame(call))})
    approvals = Approval.objects.filter(session_id=session_id, status=Approval.Status.PENDING).select_related("tool_call")
    for approval in approvals.order_by("created_at"):
        items.append({"kind": "approval", **_without_type(approval_frame(approval))})
    for plan in Plan.objects.filter(session_id=session_id, status=Plan.Status.PENDING).order_by("created_at"):
        items.append({"kind": "plan", **_without_type(plan_frame(plan))})
    return items


def _without_type(frame: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in frame.items() if k != "type"}


# Messages in the history ----------------------------------------------------------------


def _append_message(locked: LockedSession, **fields: Any) -> Message:
    """A complete message at the end of the locked session."""
    now = locked.touch()
    message = Message(session=locked.session, seq=locked.allocate(), status=Message.Status.COMPLETE, completed_at=now, **fields)
    locked.append(message)
    message.save(force_insert=True)
    outbox.frame(locked.pk, events.message_created(message_data(message)))
    return message


def _short_json(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _update_metadata(message_id: uuid.UUID | None, **changes: Any) -> None:
    """Change a card message's metadata (e.g. its decision) and tell every socket."""
    if message_id is None:
        return
    message = Message.objects.select_for_update(of=("self",)).select_related("agent", "session").filter(pk=message_id).first()
    if message is None:
        return
    message.metadata = {**message.metadata, **changes}
    message.save(update_fields=["metadata"])
    outbox.frame(message.session_id, events.message_completed(message_data(message, with_reactions=True)))


def storable_output(output: Any) -> tuple[Any, str]:
    """The output as strict JSON every database stores (no NaN, no NUL), and as text, within bounds."""
    try:
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:
        output = text = "The output could not be stored: it is not valid JSON."
    if "\x00" in text or "\\u0000" in text:
        output = text = text.replace("\x00", "").replace("\\u0000", "")
    if len(text) > MAX_OUTPUT_CHARS:
        output = text = text[:MAX_OUTPUT_CHARS] + "…"
    return output, text


def _record_result(locked: LockedSession, call: ToolCall, output: Any, *, is_error: bool, status: str | None = None) -> Message:
    """End a call with its output and put a `tool_result` message in the history."""
    output, text = storable_output(output)
    call.output = output
    call.is_error = is_error
    call.completed_at = timezone.now()
    call.status = status or (ToolCall.Status.FAILED if is_error else ToolCall.Status.DONE)
    call.save(update_fields=["output", "is_error", "completed_at", "status"])
    _update_metadata(call.message_id, status=call.status)
    return _append_message(
        locked,
        role=Message.Role.TOOL,
        type=Message.Type.TOOL_RESULT,
        content=text,
        agent=call.agent,
        reply_to=call.reply.reply_to,
        metadata={"tool_call_id": str(call.pk), "provider_call_id": call.provider_call_id, "name": call.name, "is_error": is_error},
    )


# Recording the model's calls -----------------------------------------------------------------


def tool_calls_record(*, reply: Message, calls: list[dict[str, Any]]) -> None:
    """Store the calls a model made in `reply` (status requested). Call inside the reply's final transaction."""
    ToolCall.objects.bulk_create(
        [
            ToolCall(
                session_id=reply.session_id,
                reply=reply,
                ordinal=i,
                provider_call_id=str(call.get("id") or "")[:200],
                agent=reply.agent,
                name=storable_text(str(call.get("name") or "")[:100]),
                arguments=storable_json(call.get("arguments")) if isinstance(call.get("arguments"), dict) else {},
                output={"arguments_error": storable_json(call["arguments_error"])} if call.get("arguments_error") else None,
            )
            for i, call in enumerate(calls)
        ]
    )


def _problem(call: ToolCall) -> str | None:
    """Why the call may not run, or None. Checked before anything runs."""
    if isinstance(call.output, dict) and call.output.get("arguments_error"):
        reason = call.output["arguments_error"]
        reason = reason.get("reason") if isinstance(reason, dict) else reason
        return f"{call.name}: the arguments are not valid JSON ({reason})."
    tool = tools.get_tool(call.name)
    if tool is None:
        return f"There is no tool named {call.name!r}."
    if call.agent is not None and call.name not in (call.agent.tools or []):
        return f"The agent {call.agent.slug!r} may not call {call.name!r}."
    try:
        tools.validate_arguments(tool, call.arguments)
    except tools.ToolError as exc:
        return str(exc)
    return None


def _plan_steps(arguments: dict[str, Any]) -> list[dict[str, str]]:
    steps = []
    for step in arguments.get("steps", []):
        instruction = str(step.get("instruction", "")).strip()
        agent = Agent.objects.filter(slug=step.get("agent"), is_active=True, is_orchestrator=False).first() if step.get("agent") else None
        agent = agent or routing.route(content=instruction, include_orchestrator=False)
        agent = agent or Agent.objects.filter(is_active=True, is_orchestrator=False).order_by("pk").first()
        steps.append({"agent": agent.slug if agent else "", "instruction": instruction})
    return steps


# Advancing a turn -------------------------------------------------------------------------


@dataclass
class Step:
    action: str  # "run" (a server tool), "continue" (a continuation reply), "wait", "done"
    call_id: uuid.UUID | None = None
    message_id: uuid.UUID | None = None
    # With "done": the plan whose step this reply was, to go on with its next step.
    plan_id: uuid.UUID | None = None


def advance_step(*, reply_id: uuid.UUID) -> Step:
    """Move the reply's calls one step on. Locks the session, then the reply: one process advances it at a time."""
    session_id = Message.objects.filter(pk=reply_id).values_list("session_id", flat=True).first()
    if session_id is None:
        return Step("done")
    try:
        with session_step(session_id) as locked:
            return _advance(locked, reply_id)
    except NotFound:
        return Step("done")


def _advance(locked: LockedSession, reply_id: uuid.UUID) -> Step:
    """What the reply's turn does next, decided and recorded in the caller's transaction.

    The session row must be locked. Whatever ends a call calls this in the same transaction,
    so between a result and what follows it there is no moment where the turn looks over
    (a new user message would be accepted) or where a crash leaves it with no next step.
    A "run" or "continue" step must be driven by the caller (the engine's `drive.advance`).
    """
    reply = Message.objects.select_for_update(of=("self",)).select_related("session", "agent").filter(pk=reply_id).first()
    if reply is None:
        return Step("done")
    calls = list(ToolCall.objects.select_related("agent", "reply", "session").filter(reply=reply).order_by("ordinal"))
    waiting = False
    for call in calls:
        if call.status in ENDED:
            continue
        if call.status == ToolCall.Status.APPROVED:
            _mark_running(call)
            return Step("run", call_id=call.pk)
        if call.status != ToolCall.Status.REQUESTED:
            waiting = True  # awaiting a person or the client, or running elsewhere
            break
        step = _open_call(locked, reply, call)
        if step is not None:
            return step
        if call.status in (ToolCall.Status.AWAITING_APPROVAL, ToolCall.Status.AWAITING_CLIENT):
            waiting = True
            break
    context = reply.metadata.get("context") if isinstance(reply.metadata.get("context"), dict) else {}
    plan_id = _uuid_or_none(context.get("plan_id"))
    if waiting:
        return Step("wait")
    if not calls or reply.metadata.get("continued"):
        return Step("done", plan_id=plan_id)
    reply.metadata = {**reply.metadata, "continued": True}
    reply.save(update_fields=["metadata"])
    if any(c.name == "propose_plan" for c in calls):
        return Step("done")  # the plan decision says what happens next
    if int(reply.metadata.get("round", 0)) >= MAX_TOOL_ROUNDS:
        _append_message(
            locked, role=Message.Role.ASSISTANT, type=Message.Type.TEXT, agent=reply.agent, reply_to=reply.reply_to,
            content=f"I stopped after {MAX_TOOL_ROUNDS} rounds of tool calls without an answer.",
        )
        return Step("done", plan_id=plan_id)
    results = [
        {"name": c.name, "output": c.output, "is_error": c.is_error, "status": c.status} for c in calls
    ]
    # A plan step's continuation is still that step: it carries the plan, and the plan follows it.
    step_context = {k: context[k] for k in ("plan_id", "step", "steps") if k in context}
    continuation = _start_reply(
        locked, agent=reply.agent, reply_to=reply.reply_to,
        context={"continuation": True, "tool_results": results, **step_context}, round=int(reply.metadata.get("round", 0)) + 1,
    )
    if plan_id is not None:
        Plan.objects.filter(pk=plan_id, status=Plan.Status.RUNNING).update(step_message=continuation)
    return Step("continue", message_id=continuation.pk)


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _start_reply(locked: LockedSession, *, agent: Agent | None, reply_to: Message | None, context: dict[str, Any], round: int = 0) -> Message:
    """A new streaming assistant reply in an ongoing turn; the caller returns it to be driven."""
    locked.touch()
    message = Message(
        session=locked.session, seq=locked.allocate(), role=Message.Role.ASSISTANT, type=Message.Type.TEXT, content="",
        status=Message.Status.STREAMING, agent=agent, reply_to=reply_to, worker_id=liveness.WORKER_ID,
        metadata={"context": context, "round": round},
    )
    locked.append(message)
    message.save(force_insert=True)
    outbox.frame(locked.pk, events.message_created(message_data(message)))
    return message


def _open_call(locked: LockedSession, reply: Message, call: ToolCall) -> Step | None:
    """Look at a requested call: fail it, ask a person, hand it to the client, or run it."""
    problem = _problem(call)
    tool = tools.get_tool(call.name)
    card = _append_message(
        locked, role=Message.Role.ASSISTANT, type=Message.Type.TOOL_CALL, agent=call.agent, reply_to=reply.reply_to,
        content=f"{call.name}({_short_json(call.arguments)})",
        metadata={
            "tool_call_id": str(call.pk), "provider_call_id": call.provider_call_id, "name": call.name,
            "arguments": call.arguments, "runs_on": tool.runs_on if tool else "server",
            "needs_approval": bool(tool and tool.needs_approval), "status": "requested",
        },
    )
    call.message = card
    if problem is not None or tool is None:
        call.save(update_fields=["message"])
        _record_result(locked, call, {"error": problem}, is_error=True)
        return None
    call.runs_on, call.needs_approval = tool.runs_on, tool.needs_approval
    if tool.name == "propose_plan":
        steps = _plan_steps(call.arguments)
        plan_message = _append_message(
            locked, role=Message.Role.ASSISTANT, type=Message.Type.PLAN, agent=call.agent, reply_to=reply.reply_to,
            content="Plan:\n" + "\n".join(f"{i + 1}. [{s['agent'] or 'assistant'}] {s['instruction']}" for i, s in enumerate(steps)),
        )
        plan = Plan.objects.create(session=reply.session, reply=reply, message=plan_message, steps=steps)
        plan_message.metadata = {"plan_id": str(plan.pk), "steps": steps, "status": plan.status}
        plan_message.save(update_fields=["metadata"])
        call.save(update_fields=["message", "runs_on", "needs_approval"])
        _record_result(locked, call, {"plan_id": str(plan.pk), "status": "proposed"}, is_error=False)
        outbox.frame(reply.session_id, plan_frame(plan))
        return None
    if tool.needs_approval:
        call.status = ToolCall.Status.AWAITING_APPROVAL
        call.save(update_fields=["message", "runs_on", "needs_approval", "status"])
        approval_message = _append_message(
            locked, role=Message.Role.ASSISTANT, type=Message.Type.APPROVAL, agent=call.agent, reply_to=reply.reply_to,
            content=f"Approval needed: {call.name}({_short_json(call.arguments)})",
        )
        approval = Approval.objects.create(session=reply.session, tool_call=call, message=approval_message)
        approval_message.metadata = {
            "approval_id": str(approval.pk), "tool_call_id": str(call.pk), "tool": call.name,
            "arguments": call.arguments, "status": approval.status,
        }
        approval_message.save(update_fields=["metadata"])
        _update_metadata(card.pk, status=call.status)
        outbox.frame(reply.session_id, approval_frame(approval))
        return None
    if tool.runs_on == "client":
        call.status = ToolCall.Status.AWAITING_CLIENT
        call.save(update_fields=["message", "runs_on", "needs_approval", "status"])
        _update_metadata(card.pk, status=call.status)
        outbox.frame(reply.session_id, tool_call_frame(call))
        return None
    call.save(update_fields=["message", "runs_on", "needs_approval"])
    _mark_running(call)
    return Step("run", call_id=call.pk)


def _mark_running(call: ToolCall) -> None:
    """The call is about to run in this process: a sweep in another process knows whose it is."""
    call.status = ToolCall.Status.RUNNING
    call.started_at = timezone.now()
    call.worker_id = liveness.WORKER_ID
    call.save(update_fields=["status", "started_at", "worker_id"])


def tool_run(*, call_id: uuid.UUID) -> tuple[Any, bool]:
    """Run a server tool whose call is `running`. Not in a transaction: tools may take time."""
    call = ToolCall.objects.select_related("session").get(pk=call_id)
    tool = tools.get_tool(call.name)
    if tool is None or tool.handler is None:
        return {"error": f"{call.name} cannot run on the server."}, True
    try:
        output = tools.run_server_tool(tool, call.arguments, tools.ToolContext(user_id=call.session.owner_id, session_id=str(call.session_id)))
        return output, False
    except tools.ToolError as exc:
        return {"error": str(exc)}, True


def _lock_call(call_id: uuid.UUID) -> tuple[LockedSession, ToolCall] | None:
    """Lock the call's session, then the call. Call inside transaction.atomic."""
    session_id = ToolCall.objects.filter(pk=call_id).values_list("session_id", flat=True).first()
    if session_id is None:
        return None
    try:
        locked = lock_session(session_id)
    except NotFound:
        return None
    call = ToolCall.objects.select_for_update(of=("self",)).select_related("session", "reply", "agent").filter(pk=call_id).first()
    return (locked, call) if call is not None else None


def tool_call_complete(*, call_id: uuid.UUID, output: Any, is_error: bool) -> Step:
    """Store a server tool's result, and take the turn's next step in the same transaction."""
    with transaction.atomic():
        held = _lock_call(call_id)
        if held is None or held[1].status != ToolCall.Status.RUNNING:
            return Step("done")  # ended meanwhile (a sweep took it for lost): that step went on from there
        locked, call = held
        _record_result(locked, call, output, is_error=is_error)
        step = _advance(locked, call.reply_id)
        locked.save()
        return step


def tool_call_fail(*, call_id: uuid.UUID, reason: str) -> Step:
    """End a call that could not finish (its result could not be saved, or its process died); the turn goes on."""
    with transaction.atomic():
        held = _lock_call(call_id)
        if held is None or held[1].status in ENDED:
            return Step("done")
        locked, call = held
        _record_result(locked, call, {"error": reason}, is_error=True)
        step = _advance(locked, call.reply_id)
        locked.save()
        return step


STALLED_AFTER_SECONDS = 30
# A tool running this long in a live process is stuck past every timeout of its own.
RUNNING_LOST_AFTER_SECONDS = 600


def lost_calls() -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Calls `running` in a dead process, or far longer than any tool takes: their result is lost.

    To be ended with `tool_call_fail` (saying so), so the turn can go on. (call id, reply id) pairs.
    """
    running = list(ToolCall.objects.filter(status=ToolCall.Status.RUNNING).values_list("pk", "reply_id", "worker_id", "started_at")[:200])
    if not running:
        return []
    dead = liveness.dead_worker_ids({worker_id for _, _, worker_id, _ in running})
    lost_before = timezone.now() - timezone.timedelta(seconds=RUNNING_LOST_AFTER_SECONDS)
    return [
        (call_id, reply_id) for call_id, reply_id, worker_id, started_at in running
        if worker_id in dead or (started_at is not None and started_at < lost_before)
    ]


def stalled_replies() -> list[uuid.UUID]:
    """Replies whose next call is still `requested` (or `approved`) a while after the model made it.

    Nobody moves them on: their process died between the reply's end and its first step. (Calls
    queued behind one that waits for a person are not stalled.) To be advanced again; each step
    locks what it moves, so a second driver does no harm. Oldest first.
    """
    candidates = list(
        ToolCall.objects.filter(
            status__in=[ToolCall.Status.REQUESTED, ToolCall.Status.APPROVED],
            created_at__lt=timezone.now() - timezone.timedelta(seconds=STALLED_AFTER_SECONDS),
        )
        .order_by("created_at")
        .values_list("reply_id", flat=True)[:300]
    )
    replies = list(dict.fromkeys(candidates))[:100]
    first_open: dict[uuid.UUID, str] = {}
    for reply_id, status in ToolCall.objects.filter(reply_id__in=replies).exclude(status__in=ENDED).order_by("ordinal").values_list("reply_id", "status"):
        first_open.setdefault(reply_id, status)
    return [r for r in replies if first_open.get(r) in (ToolCall.Status.REQUESTED, ToolCall.Status.APPROVED)]


WAITING = (ToolCall.Status.AWAITING_APPROVAL, ToolCall.Status.AWAITING_CLIENT)
SUPERSEDED_OUTPUT = {"error": "Not run: the user sent a new message instead.", "superseded": True}


@dataclass
class OpenWork:
    """A session's tool calls that have not ended and its plans pending or running, locked; and whether the turn runs.

    It runs while a tool is about to run or running, or a plan runs, unless what the turn does
    now is wait for the user (an approval, a client tool call, a proposed plan, and so a plan
    whose step waits).
    """

    calls: list[ToolCall]
    plans: list[Plan]
    running: bool
    why: str = ""


def open_work(*, locked: LockedSession) -> OpenWork:
    """Lock and read what is open in the session: two queries. The caller's lock statement tells whether anything
    is (see `chat.turn.turns`), so a turn with nothing open pays none."""
    calls = list(
        ToolCall.objects.select_for_update(of=("self",)).select_related("session", "reply", "agent")
        .filter(session_id=locked.pk).exclude(status__in=ENDED).order_by("reply_id", "ordinal")
    )
    first_open: dict[uuid.UUID, ToolCall] = {}
    for call in calls:
        first_open.setdefault(call.reply_id, call)
    plans = list(Plan.objects.select_for_update(of=("self",)).filter(session_id=locked.pk, status__in=[Plan.Status.PENDING, Plan.Status.RUNNING]))
    if any(call.status not in WAITING for call in first_open.values()):
        return OpenWork(calls, plans, True, "A tool is still running in this session; wait for the answer.")
    if any(p.status == Plan.Status.RUNNING for p in plans) and not calls:
        return OpenWork(calls, plans, True, "A plan is running in this session; wait for its last step.")
    return OpenWork(calls, plans, False)


def supersede(*, locked: LockedSession, work: OpenWork, keep_running: bool = False) -> None:
    """End what is open in `work` as `superseded` (unrun), and end the turns of its replies (no continuation).

    `keep_running`: a call running now is left to finish (its result is recorded; nothing follows it).
    """
    calls = [call for call in work.calls if not (keep_running and call.status == ToolCall.Status.RUNNING)]
    plans = work.plans
    now = timezone.now()
    for call in calls:
        if call.status == ToolCall.Status.AWAITING_APPROVAL:
            approval = Approval.objects.select_for_update(of=("self",)).filter(tool_call=call).first()
            if approval is not None and approval.status == Approval.Status.PENDING:
                approval.status, approval.decided_at = Approval.Status.SUPERSEDED, now
                approval.save(update_fields=["status", "decided_at"])
                _update_metadata(approval.message_id, status=approval.status)
        if call.message_id is None:
            # Queued behind the waiting one, never shown: it ends without a card or a result message.
            call.status, call.output, call.is_error, call.completed_at = ToolCall.Status.SUPERSEDED, SUPERSEDED_OUTPUT, True, now
            call.save(update_fields=["status", "output", "is_error", "completed_at"])
        else:
            _record_result(locked, call, SUPERSEDED_OUTPUT, is_error=True, status=ToolCall.Status.SUPERSEDED)
    for plan in plans:
        plan.status, plan.decided_at, plan.worker_id = Plan.Status.SUPERSEDED, plan.decided_at or now, ""
        plan.save(update_fields=["status", "decided_at", "worker_id"])
        _update_metadata(plan.message_id, status=plan.status)
    reply_ids = {call.reply_id for call in work.calls} | {plan.reply_id for plan in plans}
    if reply_ids:
        for reply in Message.objects.select_for_update(of=("self",)).filter(pk__in=reply_ids):
            reply.metadata = {**reply.metadata, "continued": True}
            reply.save(update_fields=["metadata"])


def turn_interrupt(*, locked: LockedSession, work: OpenWork | None) -> bool:
    """Stop the session's turn for a message sent with `on_busy` interrupt. Whether something still runs.

    Replies streaming are cancelled (after commit; their text is kept, status `cancelled`); calls
    not started yet and what waits for the user end `superseded`, plans too, and no continuation
    follows. A server tool running now cannot be stopped half-way: it finishes and its result is
    recorded, nothing after it. Until the cancelled replies are stored and that tool is back,
    something still runs, and the message waits at the head of the queue.
    """
    still = False
    if work is not None:
        supersede(locked=locked, work=work, keep_running=True)
        still = any(call.status == ToolCall.Status.RUNNING for call in work.calls)
    for message_id, worker_id in Message.objects.filter(session_id=locked.pk, status=Message.Status.STREAMING).values_list("pk", "worker_id"):
        outbox.after_commit(outbox.CancelReply(message_id, worker_id))
        still = True
    return still


# Decisions from the client or a person ------------------------------------------------------


def _go_on(locked: LockedSession, reply_id: uuid.UUID) -> None:
    """Take the turn's next step in this transaction; after commit, the engine drives it (runs a tool, streams a reply)."""
    step = _advance(locked, reply_id)
    if step.action in ("run", "continue"):
        outbox.after_commit(outbox.Drive(reply_id, step))


def tool_result_submit(*, user: Any, session_id: uuid.UUID, tool_call_id: uuid.UUID, output: Any, is_error: bool) -> None:
    """The client's answer to a `tool.call`. Once only; unknown or foreign ids are not found."""
    with session_step(session_id, owner_id=user.pk) as locked:
        call = (
            ToolCall.objects.select_for_update(of=("self",)).select_related("session", "reply", "agent")
            .filter(pk=tool_call_id, session_id=session_id).first()
        )
        if call is None:
            raise NotFound("Tool call not found.")
        if call.status != ToolCall.Status.AWAITING_CLIENT:
            raise AlreadyDecided(f"This tool call is not waiting for a result (it is {call.status}).")
        _record_result(locked, call, output, is_error=is_error)
        _go_on(locked, call.reply_id)


def approval_decide(*, user: Any, session_id: uuid.UUID, approval_id: uuid.UUID, decision: str, comment: str) -> None:
    """Approve or reject a risky call. Once only: a second decision is refused and changes nothing."""
    if decision not in ("approve", "reject"):
        raise InvalidInput('decision must be "approve" or "reject".')
    with session_step(session_id, owner_id=user.pk) as locked:
        approval = (
            Approval.objects.select_for_update(of=("self",)).select_related("tool_call")
            .filter(pk=approval_id, session_id=session_id).first()
        )
        if approval is None:
            raise NotFound("Approval not found.")
        if approval.status != Approval.Status.PENDING:
            raise AlreadyDecided(f"This approval was already decided ({approval.status}).")
        call = ToolCall.objects.select_for_update(of=("self",)).select_related("session", "reply", "agent").get(pk=approval.tool_call_id)
        approval.status = Approval.Status.APPROVED if decision == "approve" else Approval.Status.REJECTED
        approval.comment, approval.decided_by, approval.decided_at = comment, user, timezone.now()
        approval.save(update_fields=["status", "comment", "decided_by", "decided_at"])
        _update_metadata(approval.message_id, status=approval.status, comment=comment)
        if decision == "approve":
            call.status = ToolCall.Status.APPROVED
            call.save(update_fields=["status"])
            _update_metadata(call.message_id, status=call.status)
        else:
            call.status = ToolCall.Status.REJECTED
            reason = "A person rejected this call" + (f": {comment}" if comment else ".")
            _record_result(locked, call, {"error": reason, "rejected": True}, is_error=True, status=ToolCall.Status.REJECTED)
        _go_on(locked, call.reply_id)


def plan_decide(*, user: Any, session_id: uuid.UUID, plan_id: uuid.UUID, decision: str, comment: str) -> None:
    """Approve (the steps run in order, each by its agent) or reject (a short reply) a proposed plan."""
    if decision not in ("approve", "reject"):
        raise InvalidInput('decision must be "approve" or "reject".')
    with session_step(session_id, owner_id=user.pk) as locked:
        plan = (
            Plan.objects.select_for_update(of=("self",)).select_related("reply", "session")
            .filter(pk=plan_id, session_id=session_id).first()
        )
        if plan is None:
            raise NotFound("Plan not found.")
        if plan.status != Plan.Status.PENDING:
            raise AlreadyDecided(f"This plan was already decided ({plan.status}).")
        plan.comment, plan.decided_by, plan.decided_at = comment, user, timezone.now()
        if decision == "reject":
            plan.status = Plan.Status.REJECTED
            plan.save(update_fields=["status", "comment", "decided_by", "decided_at"])
            _update_metadata(plan.message_id, status=plan.status, comment=comment)
            _append_message(
                locked, role=Message.Role.ASSISTANT, type=Message.Type.TEXT, agent=plan.reply.agent,
                reply_to=plan.reply.reply_to, content="Understood: I will not carry out that plan.",
            )
            return
        plan.status, plan.worker_id = Plan.Status.RUNNING, liveness.WORKER_ID
        plan.save(update_fields=["status", "comment", "decided_by", "decided_at", "worker_id"])
        _update_metadata(plan.message_id, status=plan.status, comment=comment)
        outbox.after_commit(outbox.RunPlan(plan.pk))


def plan_step_next(*, plan_id: uuid.UUID) -> uuid.UUID | None:
    """Start the plan's next step as a streaming reply by its agent; None when there is nothing to run here.

    Ends the plan `done` after its last step and `failed` when a step did not complete. A plan
    driven by another live process is left to it; one whose driver died is taken over.
    Locks the session, then the plan.
    """
    session_id = Plan.objects.filter(pk=plan_id).values_list("session_id", flat=True).first()
    if session_id is None:
        return None
    try:
        with session_step(session_id) as locked:
            return _plan_step_next(locked, plan_id)
    except NotFound:
        return None


def _plan_step_next(locked: LockedSession, plan_id: uuid.UUID) -> uuid.UUID | None:
    plan = Plan.objects.select_for_update(of=("self",)).select_related("session", "reply", "step_message").filter(pk=plan_id).first()
    if plan is None or plan.status != Plan.Status.RUNNING:
        return None
    if plan.worker_id != liveness.WORKER_ID and plan.worker_id not in liveness.dead_worker_ids({plan.worker_id}):
        return None  # its driver is alive elsewhere
    step_reply = plan.step_message
    if step_reply is not None and step_reply.status == Message.Status.STREAMING:
        return None  # still being written; its end (or the interrupted sweep) moves the plan on
    if step_reply is not None and ToolCall.objects.filter(reply=step_reply).exclude(status__in=ENDED).exists():
        return None  # the step's tools are under way (or wait for a person): their end moves the plan on
    if step_reply is not None and step_reply.status != Message.Status.COMPLETE:
        _plan_end(plan, Plan.Status.FAILED)
        return None
    if plan.current_step >= len(plan.steps):
        _plan_end(plan, Plan.Status.DONE)
        return None
    index = plan.current_step
    step = plan.steps[index]
    agent = Agent.objects.filter(slug=step.get("agent"), is_active=True).first()
    message = _start_reply(
        locked, agent=agent, reply_to=plan.reply.reply_to,
        context={"plan_id": str(plan.pk), "step": index + 1, "steps": len(plan.steps), "instruction": step["instruction"]},
    )
    plan.current_step, plan.step_message, plan.worker_id = index + 1, message, liveness.WORKER_ID
    plan.save(update_fields=["current_step", "step_message", "worker_id"])
    return message.pk


def _plan_end(plan: Plan, status: str) -> None:
    plan.status, plan.worker_id = status, ""
    plan.save(update_fields=["status", "worker_id"])
    _update_metadata(plan.message_id, status=status)


def stalled_plans() -> list[uuid.UUID]:
    """Running plans nobody moves on: to be driven again (see `plan_step_next`, which decides under the plan's lock).

    Those whose driving process is dead, and this process's own that stand still: no step
    under way for a while (the end of a step moves its plan on at once; an error there left it).
    """
    running = list(
        Plan.objects.filter(status=Plan.Status.RUNNING).order_by("decided_at")
        .values_list("pk", "worker_id", "decided_at", "step_message__status", "step_message__completed_at", "step_message_id")[:100]
    )
    if not running:
        return []
    dead = liveness.dead_worker_ids({row[1] for row in running})
    quiet = timezone.now() - timezone.timedelta(seconds=STALLED_AFTER_SECONDS)
    stalled = []
    for plan_id, worker_id, decided_at, step_status, step_completed_at, step_id in running:
        if worker_id in dead:
            stalled.append(plan_id)
        elif worker_id == liveness.WORKER_ID and step_status != Message.Status.STREAMING:
            since = step_completed_at if step_id is not None else decided_at
            if since is not None and since < quiet and not ToolCall.objects.filter(reply_id=step_id).exclude(status__in=ENDED).exists():
                stalled.append(plan_id)
    return stalled
