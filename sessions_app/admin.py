"""Operators' view of chat sessions: read-only history, tool calls, approvals and plans, editable title, exports.

Nothing here can delete or rewrite a message: sessions cannot be added or deleted, and a title
edit goes through `session_update` (which saves only the title and the activity time).
Each table on the session page takes one query (two for messages and their reactions), whatever its length.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from chat import exports
from chat.branches import attach_versions, on_path, session_path
from chat.models import Approval, Message, Plan, QueuedMessage, Reaction, ToolCall
from chat.serializers import summarize_reactions
from sessions_app.models import ChatSession
from sessions_app.services import session_update


class ChatSessionForm(forms.ModelForm):
    class Meta:
        model = ChatSession
        fields = ("title",)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        session = self.instance
        if session.mode == ChatSession.Mode.DIRECT and session.agent_id is None:
            raise forms.ValidationError(
                "This direct-mode session has no agent any more (it was deleted), so it cannot be edited here."
            )
        return cleaned


def _download(body: Iterator[str], filename: str, content_type: str) -> StreamingHttpResponse:
    """Streamed as it is made: an export of a million messages never sits in memory whole."""
    response = StreamingHttpResponse((piece.encode("utf-8") for piece in body), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# The session page shows its messages a page at a time (?messages_page=N), by seq.
MESSAGES_PER_PAGE = 200
_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar("chat_admin_request", default=None)


def _export_filename(queryset: QuerySet[ChatSession], extension: str) -> str:
    ids = list(queryset.values_list("pk", flat=True)[:2])
    if len(ids) == 1:
        return f"session-{ids[0]}.{extension}"
    return f"sessions-{timezone.now():%Y%m%d-%H%M%S}.{extension}"


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def _pre(text: str) -> SafeString:
    return format_html('<div style="white-space: pre-wrap; max-width: 60em">{}</div>', text)


def _json_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


def _username(user: Any) -> str:
    return user.get_username() if user is not None else "-"


def _table(css_class: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> SafeString:
    """An HTML table; every cell is escaped unless it is already safe HTML (built with format_html)."""
    head = format_html_join("", "<th>{}</th>", ((header,) for header in headers))
    body = format_html_join(
        "\n", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows)
    )
    return format_html('<table class="{}"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', css_class, head, body)


def _plan_steps(steps: Any) -> SafeString | str:
    if not isinstance(steps, list) or not steps:
        return "-"
    items = (
        (step.get("agent") or "-", step.get("instruction", "")) if isinstance(step, dict) else ("-", _json_text(step))
        for step in steps
    )
    return format_html('<ol style="margin: 0; padding-left: 1.5em">{}</ol>', format_html_join("", "<li><b>{}</b>: {}</li>", items))


@admin.register(ChatSession)
class ChatSessionAdmin(admin.ModelAdmin):
    form = ChatSessionForm
    list_display = ("title_display", "owner", "agent", "mode", "message_count_display", "tokens_display", "updated_at", "created_at")
    list_display_links = ("title_display",)
    list_select_related = ("owner", "agent")
    list_filter = ("mode", "agent", "created_at", "updated_at")
    search_fields = ("title", "owner__username", "id")
    ordering = ("-updated_at", "-id")
    date_hierarchy = "updated_at"
    fields = (
        "id", "owner", "title", "mode", "agent", "on_busy", "created_at", "updated_at", "seq", "message_count", "leaf", "leaf_depth", "lines",
        "prompt_tokens", "completion_tokens", "messages_table", "queue_table", "tool_calls_table", "approvals_table", "plans_table",
    )
    readonly_fields = (
        "id", "owner", "mode", "agent", "on_busy", "created_at", "updated_at", "seq", "message_count", "leaf", "leaf_depth", "lines",
        "prompt_tokens", "completion_tokens", "messages_table", "queue_table", "tool_calls_table", "approvals_table", "plans_table",
    )
    actions = ("download_json", "download_json_every_branch", "download_markdown")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ChatSession]:
        # The message count is a column of the session row (kept by the steps that add messages).
        return super().get_queryset(request).select_related("owner", "agent")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ChatSession | None = None) -> bool:
        return False

    @admin.display(description="Tokens")
    def tokens_display(self, session: ChatSession) -> int:
        return session.prompt_tokens + session.completion_tokens

    @admin.display(description="Messages", ordering="message_count")
    def message_count_display(self, session: ChatSession) -> int:
        return session.message_count

    @admin.display(description="Title", ordering="title")
    def title_display(self, session: ChatSession) -> str:
        return session.title or f"(untitled {str(session.pk)[:8]})"

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None) -> HttpResponse:
        token = _request.set(request)  # the messages table reads its page from the request
        try:
            response = super().change_view(request, object_id, form_url, extra_context)
            if hasattr(response, "render"):
                response.render()  # now, while the request is known (a TemplateResponse renders later otherwise)
            return response
        finally:
            _request.reset(token)

    @admin.display(description="Messages")
    def messages_table(self, session: ChatSession) -> SafeString | str:
        request = _request.get()
        pages = max(1, -(-session.seq // MESSAGES_PER_PAGE))
        try:
            page = int(request.GET.get("messages_page", "1")) if request is not None else 1
        except ValueError:
            page = 1
        page = min(max(page, 1), pages)
        # Seqs are allocated without gaps and never reused: a page is a range of seq (the (session, seq) index).
        messages = list(
            Message.objects.filter(session=session, seq__gt=(page - 1) * MESSAGES_PER_PAGE, seq__lte=page * MESSAGES_PER_PAGE)
            .select_related("agent", "parent")
            .prefetch_related(Prefetch("reactions", queryset=Reaction.objects.order_by("created_at", "pk")))
            .order_by("seq")
        )
        if not messages:
            return "No messages."
        # The tree: every version of every message is listed by seq; the active branch (what the user sees) is marked.
        attach_versions(messages, lines=session.lines)
        active = on_path(messages, session_path(session))
        return format_html("{}{}{}", self._pager(page, pages), self._messages(messages, active, session.lines), self._pager(page, pages))

    @staticmethod
    def _pager(page: int, pages: int) -> SafeString | str:
        if pages == 1:
            return ""
        links = []
        for target, label in ((1, "« first"), (page - 1, "‹ older"), (page + 1, "newer ›"), (pages, "last »")):
            if 1 <= target <= pages and target != page:
                links.append(format_html('<a href="?messages_page={}">{}</a>', target, label))
            else:
                links.append(format_html("<span>{}</span>", label))
        return format_html(
            '<p class="chat-pager">Messages, page {} of {} ({} a page): {}</p>', page, pages, MESSAGES_PER_PAGE,
            format_html_join(" · ", "{}", ((link,) for link in links)),
        )

    @staticmethod
    def _messages(messages: list[Message], active: set[Any], lines: int) -> SafeString:
        def version(message: Message) -> str:
            versions = getattr(message, "_versions", None)
            return f"{versions.index(str(message.pk)) + 1} of {len(versions)}" if versions else ""

        def branch(message: Message) -> SafeString | str:
            if lines <= 1:
                return "active"
            mark = "active" if message.pk in active else "other"
            return format_html('<span class="chat-branch chat-branch--{}">line {} · {}</span>', mark, message.line, mark)

        return _table(
            "chat-messages",
            ["Seq", "Parent", "Branch", "Version", "Role", "Type", "Status", "Agent", "Content", "Error", "Reactions", "Created"],
            (
                (
                    format_html("<strong>{}</strong>", message.seq) if message.pk in active else message.seq,
                    message.parent.seq if message.parent is not None else "-",
                    branch(message),
                    version(message),
                    message.role,
                    message.type,
                    message.status,
                    message.agent.slug if message.agent else "-",
                    _pre(message.content),
                    message.error or "",
                    " ".join(f"{r['emoji']} {r['count']}" for r in summarize_reactions(message.reactions.all(), None)),
                    _when(message.created_at),
                )
                for message in messages
            ),
        )

    @admin.display(description="Queue")
    def queue_table(self, session: ChatSession) -> SafeString | str:
        queued = list(QueuedMessage.objects.filter(session=session).order_by("position"))
        if not queued:
            return "No queued messages."
        return _table(
            "chat-queue",
            ["#", "Content", "Reply", "Edit of", "Interrupt", "Client id", "Queued at"],
            (
                (i + 1, _pre(item.content), "yes" if item.reply else "no", item.edit_of_id or "-", "yes" if item.interrupt else "no",
                 item.client_id or "-", _when(item.created_at))
                for i, item in enumerate(queued)
            ),
        )

    @admin.display(description="Tool calls")
    def tool_calls_table(self, session: ChatSession) -> SafeString | str:
        calls = list(ToolCall.objects.filter(session=session).select_related("agent").order_by("created_at", "ordinal", "pk"))
        if not calls:
            return "No tool calls."
        return _table(
            "chat-tool-calls",
            ["Name", "Arguments", "Status", "Runs on", "Needs approval", "Output or error", "Agent", "Created", "Completed"],
            (
                (
                    call.name,
                    _pre(_json_text(call.arguments)),
                    call.status,
                    call.runs_on,
                    "yes" if call.needs_approval else "no",
                    format_html("<strong>Error</strong>{}", _pre(_json_text(call.output))) if call.is_error else _pre(_json_text(call.output)),
                    call.agent.slug if call.agent else "-",
                    _when(call.created_at),
                    _when(call.completed_at),
                )
                for call in calls
            ),
        )

    @admin.display(description="Approvals")
    def approvals_table(self, session: ChatSession) -> SafeString | str:
        approvals = list(
            Approval.objects.filter(session=session).select_related("tool_call", "decided_by").order_by("created_at", "pk")
        )
        if not approvals:
            return "No approvals."
        return _table(
            "chat-approvals",
            ["Tool", "Arguments", "Status", "Comment", "Decided by", "Decided at", "Created"],
            (
                (
                    approval.tool_call.name,
                    _pre(_json_text(approval.tool_call.arguments)),
                    approval.status,
                    _pre(approval.comment),
                    _username(approval.decided_by),
                    _when(approval.decided_at),
                    _when(approval.created_at),
                )
                for approval in approvals
            ),
        )

    @admin.display(description="Plans")
    def plans_table(self, session: ChatSession) -> SafeString | str:
        plans = list(Plan.objects.filter(session=session).select_related("decided_by").order_by("created_at", "pk"))
        if not plans:
            return "No plans."
        return _table(
            "chat-plans",
            ["Steps", "Status", "Current step", "Comment", "Decided by", "Decided at", "Created"],
            (
                (
                    _plan_steps(plan.steps),
                    plan.status,
                    f"{plan.current_step} of {len(plan.steps)}" if isinstance(plan.steps, list) else plan.current_step,
                    _pre(plan.comment),
                    _username(plan.decided_by),
                    _when(plan.decided_at),
                    _when(plan.created_at),
                )
                for plan in plans
            ),
        )

    def save_model(self, request: HttpRequest, obj: ChatSession, form: forms.ModelForm, change: bool) -> None:
        # A full save would write back `seq` as loaded and could hand out a seq twice.
        if change and "title" in form.changed_data:
            session_update(session=obj, title=obj.title)

    @admin.action(description="Download as JSON (active branches)")
    def download_json(self, request: HttpRequest, queryset: QuerySet[ChatSession]) -> StreamingHttpResponse:
        return _download(exports.iter_export_json(queryset), _export_filename(queryset, "json"), "application/json")

    @admin.action(description="Download as JSON, every branch")
    def download_json_every_branch(self, request: HttpRequest, queryset: QuerySet[ChatSession]) -> StreamingHttpResponse:
        return _download(exports.iter_export_json(queryset, every_branch=True), _export_filename(queryset, "json"), "application/json")

    @admin.action(description="Download as Markdown")
    def download_markdown(self, request: HttpRequest, queryset: QuerySet[ChatSession]) -> StreamingHttpResponse:
        return _download(
            exports.iter_export_markdown(queryset),
            _export_filename(queryset, "md"),
            "text/markdown; charset=utf-8",
        )
