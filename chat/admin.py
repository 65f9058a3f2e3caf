"""Operators' view of agents (editable) and of messages, reactions, tool calls, approvals, plans,
idempotency records and workers (read-only)."""

from __future__ import annotations

import json
import uuid
from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from chat.models import Agent, Approval, IdempotencyRecord, Message, Plan, Reaction, TokenBudget, ToolCall, UsageDay, Worker
from chat.serializers import summarize_reactions
from chat.tools import REGISTRY


class ToolsField(forms.MultipleChoiceField):
    """Tool names as checkboxes, stored as a JSON list; unknown names get a clear error in `clean_tools`."""

    def valid_value(self, value: Any) -> bool:
        return True


def _tool_choices(extra: list[str]) -> list[tuple[str, str]]:
    choices = [(name, f"{name} — {tool.description}") for name, tool in REGISTRY.items()]
    choices += [(name, f"{name} — not an available tool") for name in extra if name not in REGISTRY]
    return choices


class AgentForm(forms.ModelForm):
    tools = ToolsField(required=False, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = Agent
        fields = (
            "slug", "name", "description", "system_prompt", "provider", "model", "base_url", "api_key_env",
            "tools", "is_orchestrator", "is_active",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        stored = self.instance.tools if isinstance(self.instance.tools, list) else []
        # Names stored earlier but no longer registered stay visible so the operator can untick them.
        field = cast(ToolsField, self.fields["tools"])
        field.choices = _tool_choices([str(name) for name in stored])
        field.help_text = "Tools this agent may call. Available: " + ", ".join(REGISTRY) + "."

    def clean_api_key_env(self) -> str:
        variable = (self.cleaned_data.get("api_key_env") or "").strip()
        prefix = settings.CHAT["AGENT_KEY_ENV_PREFIX"]
        if variable and not variable.startswith(prefix):
            raise forms.ValidationError(
                "Key variables must start with %(prefix)s (AGENT_KEY_ENV_PREFIX): other environment variables are the server's own.",
                code="key_variable_not_allowed", params={"prefix": prefix},
            )
        return variable

    def clean_tools(self) -> list[str]:
        names = list(dict.fromkeys(self.cleaned_data.get("tools") or []))
        unknown = [name for name in names if name not in REGISTRY]
        if unknown:
            raise forms.ValidationError(
                "Unknown tool%(s)s: %(unknown)s. Available tools: %(available)s.",
                code="unknown_tool",
                params={
                    "s": "s" if len(unknown) > 1 else "",
                    "unknown": ", ".join(unknown),
                    "available": ", ".join(REGISTRY),
                },
            )
        return names


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    form = AgentForm
    list_display = ("slug", "name", "provider", "model", "tools_display", "is_orchestrator", "is_active")
    list_filter = ("provider", "is_active", "is_orchestrator")
    search_fields = ("slug", "name", "description")
    readonly_fields = ("created_at",)
    fieldsets = (
        (None, {"fields": ["slug", "name", "description", "system_prompt", "is_orchestrator", "is_active"]}),
        ("Model", {"fields": ["provider", "model", "base_url", "api_key_env"]}),
        ("Tools", {"fields": ["tools"]}),
        ("Record", {"fields": ["created_at"]}),
    )

    @admin.display(description="Tools")
    def tools_display(self, agent: Agent) -> str:
        return ", ".join(agent.tools or []) or "-"


class ReadOnlyAdmin(admin.ModelAdmin):
    """View only: operators may look, never add, change or delete."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ("session_id", "seq", "role", "type", "status", "agent", "content_preview", "created_at")
    list_select_related = ("agent",)
    list_filter = ("status", "role", "type", "agent")
    search_fields = ("content", "=session__id")
    show_full_result_count = False
    fields = (
        "id", "session", "seq", "role", "type", "status", "agent", "content", "error", "reactions_display",
        "client_id", "reply_to", "metadata", "worker_id", "created_at", "completed_at",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Message]:
        return (
            super()
            .get_queryset(request)
            .prefetch_related(Prefetch("reactions", queryset=Reaction.objects.order_by("created_at", "pk")))
        )

    @admin.display(description="Content")
    def content_preview(self, message: Message) -> str:
        return Truncator(message.content).chars(80)

    @admin.display(description="Reactions")
    def reactions_display(self, message: Message) -> str:
        summary = summarize_reactions(message.reactions.all(), None)
        return " ".join(f"{entry['emoji']} {entry['count']}" for entry in summary) or "-"


@admin.register(Reaction)
class ReactionAdmin(ReadOnlyAdmin):
    list_display = ("emoji", "message", "user", "created_at")
    list_select_related = ("message", "user")
    list_filter = ("emoji", "created_at")
    search_fields = ("emoji", "message__content", "user__username")
    show_full_result_count = False


def _session_link(session_id: uuid.UUID) -> SafeString:
    return format_html('<a href="{}">{}</a>', reverse("admin:sessions_app_chatsession_change", args=[session_id]), session_id)


def _json_block(value: Any) -> SafeString:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2, default=str)
    return format_html('<div style="white-space: pre-wrap; max-width: 60em">{}</div>', text)


@admin.register(ToolCall)
class ToolCallAdmin(ReadOnlyAdmin):
    list_display = ("name", "status", "session_link", "agent", "runs_on", "needs_approval", "is_error", "created_at", "completed_at")
    list_select_related = ("agent",)
    list_filter = ("status", "runs_on", "needs_approval", "is_error")
    search_fields = ("name", "=session__id")
    ordering = ("-created_at", "-ordinal")
    show_full_result_count = False
    fields = (
        "id", "session", "reply", "message", "ordinal", "provider_call_id", "agent", "name", "arguments_display",
        "runs_on", "needs_approval", "status", "output_display", "is_error", "created_at", "completed_at",
    )

    @admin.display(description="Session", ordering="session")
    def session_link(self, call: ToolCall) -> SafeString:
        return _session_link(call.session_id)

    @admin.display(description="Arguments")
    def arguments_display(self, call: ToolCall) -> SafeString:
        return _json_block(call.arguments)

    @admin.display(description="Output")
    def output_display(self, call: ToolCall) -> SafeString | str:
        return "-" if call.output is None else _json_block(call.output)


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = ("tool_name", "status", "session_link", "decided_by", "decided_at", "created_at")
    list_select_related = ("tool_call", "decided_by")
    list_filter = ("status",)
    search_fields = ("tool_call__name", "=session__id")
    ordering = ("-created_at",)
    show_full_result_count = False
    fields = ("id", "session", "tool_call", "tool_arguments", "message", "status", "comment", "decided_by", "decided_at", "created_at")

    @admin.display(description="Tool", ordering="tool_call__name")
    def tool_name(self, approval: Approval) -> str:
        return approval.tool_call.name

    @admin.display(description="Session", ordering="session")
    def session_link(self, approval: Approval) -> SafeString:
        return _session_link(approval.session_id)

    @admin.display(description="Arguments")
    def tool_arguments(self, approval: Approval) -> SafeString:
        return _json_block(approval.tool_call.arguments)


@admin.register(Plan)
class PlanAdmin(ReadOnlyAdmin):
    list_display = ("steps_preview", "status", "session_link", "current_step", "decided_by", "decided_at", "created_at")
    list_select_related = ("decided_by",)
    list_filter = ("status",)
    # Plans have no name: their steps (agents and instructions) are what an operator searches for.
    search_fields = ("steps", "=session__id")
    ordering = ("-created_at",)
    show_full_result_count = False
    fields = ("id", "session", "reply", "message", "steps_display", "status", "current_step", "comment", "decided_by", "decided_at", "created_at")

    @admin.display(description="Steps")
    def steps_preview(self, plan: Plan) -> str:
        steps = plan.steps if isinstance(plan.steps, list) else []
        text = "; ".join(f"{step.get('agent') or '-'}: {step.get('instruction', '')}" for step in steps if isinstance(step, dict))
        return Truncator(text).chars(80) or "-"

    @admin.display(description="Session", ordering="session")
    def session_link(self, plan: Plan) -> SafeString:
        return _session_link(plan.session_id)

    @admin.display(description="Steps")
    def steps_display(self, plan: Plan) -> SafeString:
        return _json_block(plan.steps)


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ("key", "user", "state", "response_status", "created_at")
    list_select_related = ("user",)
    list_filter = ("state", "created_at")
    search_fields = ("key", "user__username")


@admin.register(Worker)
class WorkerAdmin(ReadOnlyAdmin):
    list_display = ("id", "hostname", "pid", "started_at", "heartbeat_at")
    search_fields = ("id", "hostname")


@admin.register(UsageDay)
class UsageDayAdmin(ReadOnlyAdmin):
    """Tokens per user per day (UTC), as each reply's end added them; filter by day, search by user."""

    list_display = ("day", "user", "prompt_tokens", "completion_tokens", "total_tokens_display", "replies")
    list_select_related = ("user",)
    list_filter = ("day",)
    date_hierarchy = "day"
    search_fields = ("user__username",)
    ordering = ("-day", "user__username")

    @admin.display(description="Total tokens")
    def total_tokens_display(self, row: UsageDay) -> int:
        return row.total_tokens


@admin.register(TokenBudget)
class TokenBudgetAdmin(admin.ModelAdmin):
    """A user's own daily token budget, instead of DAILY_TOKEN_BUDGET (0: no limit for them)."""

    list_display = ("user", "daily_tokens")
    list_select_related = ("user",)
    search_fields = ("user__username",)
    autocomplete_fields = ("user",)
