// Pending tool calls, approvals and plans: the live cards that follow the message they belong
// to, their decisions, and the client tools this browser runs to answer a tool call; the table
// that reads where a card message stands (shared with the history cards of messages.js); and
// the click handler of the message list (decisions, copying code, reactions).

import { runClientTool } from "./tools.js";
import { agentName, dom, h, isNearBottom, pretty, scrollToBottom, showNotice, state, updateEmpty } from "./state.js";
import { openPicker, toggleReaction } from "./reactions.js";

// Pending tool calls, approvals and plans ---------------------------------------

// The server keeps where a card message stands in `metadata.status`:
//   approval: pending → approved | rejected (or superseded: a new message was sent instead)
//   plan: pending → running → done | failed, or rejected
//   tool_call: requested, awaiting_approval, awaiting_client, approved, running, done, failed, rejected
// This one table turns it into the decision and progress the page shows: the badges of history
// cards, and the state of the live cards that follow those messages.
export const CARD_STATUS = {
  pending: { label: "Waiting for a decision", tone: "waiting" },
  requested: { label: "Requested", tone: "waiting" },
  awaiting_approval: { label: "Waiting for approval", tone: "waiting" },
  awaiting_client: { label: "Waiting for the browser", tone: "waiting" },
  approved: { label: "Approved", tone: "approved", decision: "approved" },
  rejected: { label: "Rejected", tone: "rejected", decision: "rejected" },
  superseded: { label: "Superseded", tone: "superseded", decision: "superseded" },
  running: { label: "Running", tone: "running", progress: "running" },
  done: { label: "Done", tone: "done", progress: "done" },
  failed: { label: "Failed", tone: "failed", progress: "failed" },
};
// Older spellings, so a card written by an earlier version still reads right.
const STATUS_ALIASES = { approve: "approved", reject: "rejected", proposed: "pending", open: "pending" };
const DECISION_TEXT = { approved: "Approved.", rejected: "Rejected.", superseded: "Superseded: a new message was sent instead." };

export function cardState(data) {
  const meta = data.metadata || {};
  const raw = [meta.status, meta.decision, meta.state].find((v) => typeof v === "string" && v);
  const status = raw ? STATUS_ALIASES[raw] || raw : null;
  const known = status ? CARD_STATUS[status] : null;
  let decision = (known && known.decision) || null;
  const progress = (known && known.progress) || null;
  // A plan that runs (or ran) was approved.
  if (data.type === "plan" && progress) decision = "approved";
  return { status, decision, progress };
}

export const KIND_OF_FRAME = { "tool.call": "tool_call", "approval.requested": "approval", "plan.proposed": "plan" };
const ID_FIELD = { tool_call: "tool_call_id", approval: "approval_id", plan: "plan_id" };

function pendingKey(kind, id) {
  return `${kind}:${id}`;
}

export function addPending(item) {
  const kind = item.kind;
  const id = item[ID_FIELD[kind]];
  if (!id) return;
  const key = pendingKey(kind, id);
  if (state.pending.has(key)) return;
  // The socket and generation the item arrived on: an answer goes back on that socket only.
  const record = { key, kind, id, item, el: buildPendingCard(kind, item), decided: null, socket: state.socket, generation: state.generation };
  state.pending.set(key, record);
  placePendingCard(record);
  updateEmpty();
  if (kind === "tool_call") answerToolCall(record);
}

function placePendingCard(record) {
  const stick = isNearBottom();
  const host = record.item.message_id && state.messages.get(record.item.message_id);
  if (host && host.el.isConnected) {
    let anchor = host.el;
    while (anchor.nextElementSibling && anchor.nextElementSibling.classList.contains("pending")) anchor = anchor.nextElementSibling;
    if (anchor !== record.el) anchor.after(record.el);
  } else if (!record.el.isConnected) {
    dom.messages.append(record.el);
  }
  if (stick) scrollToBottom();
}

export function placePendingCards() {
  for (const record of state.pending.values()) {
    const host = record.item.message_id && state.messages.get(record.item.message_id);
    if (host && record.el.previousElementSibling !== host.el && !record.placedAfterHost) {
      record.placedAfterHost = true;
      placePendingCard(record);
    }
  }
}

// After the branch was read again: a card whose message is no longer shown (it was on another
// branch) goes if it was settled, as after a reload; one still open stays, at the end.
export function dropDetachedPending() {
  for (const record of [...state.pending.values()]) {
    const hostId = record.item.message_id;
    if (!hostId || state.messages.has(hostId)) continue;
    if (record.resolved) {
      record.el.remove();
      state.pending.delete(record.key);
    } else if (record.placedAfterHost) {
      record.placedAfterHost = false;
      dom.messages.append(record.el);
    }
  }
}

function buildPendingCard(kind, item) {
  const card = h("section", { class: `pending pending--${kind}`, dataset: { kind, pendingId: item[ID_FIELD[kind]] } });
  const status = h("p", { class: "pending__status", role: "status" });
  if (kind === "tool_call") {
    card.setAttribute("aria-label", `Tool call ${item.name}`);
    card.append(
      h("p", { class: "card__title" }, h("span", { class: "card__kind", text: "Tool call" }), h("code", { text: item.name || "?" })),
      h("details", { class: "card__details" }, h("summary", { text: "Arguments" }), h("pre", { text: pretty(item.arguments ?? {}) })),
      status,
    );
    status.textContent = "Running in this browser…";
    return card;
  }
  const approve = h("button", { type: "button", class: "btn btn--primary btn--small", dataset: { action: "decide", decision: "approve" } }, "Approve");
  const reject = h("button", { type: "button", class: "btn btn--small", dataset: { action: "decide", decision: "reject" } }, "Reject");
  const actions = h("div", { class: "pending__actions" }, approve, reject);
  if (kind === "approval") {
    card.setAttribute("aria-label", `Approval needed for ${item.tool}`);
    approve.setAttribute("aria-label", `Approve ${item.tool}`);
    reject.setAttribute("aria-label", `Reject ${item.tool}`);
    card.append(
      h("p", { class: "card__title" }, h("span", { class: "card__kind", text: "Approval needed" }), h("code", { text: item.tool || "?" })),
      h("p", { class: "card__text", text: "The agent wants to run this tool with these arguments:" }),
      h("pre", { class: "card__args", text: pretty(item.arguments ?? {}) }),
      actions,
      status,
    );
  } else {
    const steps = Array.isArray(item.steps) ? item.steps : [];
    card.setAttribute("aria-label", "Plan awaiting approval");
    approve.setAttribute("aria-label", "Approve the plan");
    reject.setAttribute("aria-label", "Reject the plan");
    card.append(
      h("p", { class: "card__title" }, h("span", { class: "card__kind", text: "Proposed plan" }), h("span", { class: "card__sub", text: `${steps.length} ${steps.length === 1 ? "step" : "steps"}` })),
      h(
        "ol",
        { class: "plan-steps" },
        steps.map((step) => h("li", {}, h("strong", { class: "plan-steps__agent", text: agentName(step.agent) }), h("span", { text: ` ${step.instruction || ""}` }))),
      ),
      actions,
      status,
    );
  }
  return card;
}

export function markPending(record, decided, text) {
  record.decided = decided;
  record.el.dataset.state = decided || "open";
  record.el.querySelector(".pending__status").textContent = text || "";
  for (const button of record.el.querySelectorAll("button[data-action=decide]")) button.disabled = !!decided;
}

export function resolvePending(key, decided, text) {
  const record = state.pending.get(key);
  if (!record) return;
  markPending(record, decided, text);
  record.resolved = true;
}

// A plan's card keeps its decision in `data-state`; what the approved plan is doing goes to its
// status line (and `data-progress`), as the plan message's metadata moves running → done | failed.
const PLAN_PROGRESS = {
  running: "Approved: running the steps…",
  done: "Approved: every step is done.",
  failed: "Approved, but a step did not finish.",
};

export function resolvePendingFromMessage(data) {
  const meta = data.metadata || {};
  const checks = [
    ["tool_call", meta.tool_call_id, data.type === "tool_result"],
    ["approval", meta.approval_id, data.type === "approval"],
    ["plan", meta.plan_id, data.type === "plan"],
  ];
  for (const [kind, id, relevant] of checks) {
    if (!id || !relevant) continue;
    const record = state.pending.get(pendingKey(kind, id));
    if (!record) continue;
    const { decision, progress } = cardState(data);
    if (kind === "plan" && progress) {
      markPending(record, "approved", PLAN_PROGRESS[progress]);
      record.el.dataset.progress = progress;
      record.resolved = true;
      continue;
    }
    if (record.resolved) continue;
    if (kind === "tool_call") resolvePending(record.key, "answered", "Answered.");
    else if (decision) resolvePending(record.key, decision, DECISION_TEXT[decision]);
  }
}

// After a `session.ready`, its `pending` list is the whole truth about what is still open.
export function syncPending(items) {
  const open = new Set();
  for (const item of items || []) {
    const kind = item.kind;
    const id = item[ID_FIELD[kind]];
    if (!id) continue;
    open.add(pendingKey(kind, id));
    addPending(item);
  }
  for (const record of state.pending.values()) {
    if (!open.has(record.key) && !record.resolved) {
      const text = record.decided ? record.el.querySelector(".pending__status").textContent : "Answered elsewhere.";
      resolvePending(record.key, record.decided || "closed", text);
    }
  }
}

dom.messages.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const action = button.dataset.action;
  if (action === "decide") {
    const card = button.closest(".pending");
    const record = state.pending.get(pendingKey(card.dataset.kind, card.dataset.pendingId));
    if (!record || record.decided) return;
    const decision = button.dataset.decision;
    const frame =
      record.kind === "approval"
        ? { type: "hitl_decision", approval_id: record.id, decision }
        : { type: "plan_decision", plan_id: record.id, decision };
    frame.request_id = `decide:${record.key}`;
    if (!state.socket || !state.socket.send(frame)) {
      showNotice("Not connected: the decision could not be sent. It will stay open until you decide.");
      return;
    }
    markPending(record, decision === "approve" ? "approved" : "rejected", decision === "approve" ? "Approved." : "Rejected.");
    return;
  }
  const article = button.closest("article.msg");
  const entry = article && state.messages.get(article.dataset.id);
  if (action === "copy-code") {
    const code = button.closest(".codeblock")?.querySelector("pre");
    if (code) {
      try {
        await navigator.clipboard.writeText(code.textContent);
        button.textContent = "Copied";
      } catch {
        button.textContent = "Copy failed";
      }
      setTimeout(() => (button.textContent = "Copy"), 1500);
    }
  } else if (!entry) {
    return;
  } else if (action === "open-picker") {
    openPicker(button, entry);
  } else if (action === "toggle-reaction") {
    toggleReaction(entry, button.dataset.emoji);
  }
});

// Client tools: one tab answers each call (a Web Lock decides which, where available).
// An answer that cannot be sent (no connection) frees the lock at once and is sent again after
// the next session.ready, if the call is still open then.
export async function answerToolCall(record) {
  if (record.answering || record.resolved) return;
  record.answering = true;
  const status = record.el.querySelector(".pending__status");
  const current = () => record.generation === state.generation && record.socket === state.socket && !record.resolved;
  const run = async () => {
    if (!record.result) record.result = await runClientTool(record.item.name, record.item.arguments);
    if (!current()) return false; // another chat is open now, or the call was closed meanwhile
    const { output, is_error } = record.result;
    const sent = record.socket && record.socket.send({
      type: "tool_result",
      tool_call_id: record.id,
      output,
      is_error,
      request_id: `tool:${record.id}`,
    });
    if (!sent) {
      status.textContent = "Not connected; the result will be sent after reconnecting.";
      record.retry = true;
      return false;
    }
    record.retry = false;
    record.el.append(h("details", { class: "card__details" }, h("summary", { text: is_error ? "Error" : "Result" }), h("pre", { text: pretty(output) })));
    resolvePending(record.key, is_error ? "error" : "answered", is_error ? "Answered with an error: this page has no such tool." : "Answered by this browser.");
    return true;
  };
  try {
    if (navigator.locks && navigator.locks.request) {
      await navigator.locks.request(`chat-tool-${record.id}`, { ifAvailable: true }, async (lock) => {
        if (!lock) {
          status.textContent = "Answered in another tab.";
          // Looked at again after the next session.ready, in case that tab could not send it.
          record.retry = true;
          return;
        }
        // Held a little longer after sending, so a tab that sees the call late does not answer
        // it twice; a failed send lets go at once, so the retry after reconnecting can take it.
        if (await run()) await new Promise((resolve) => setTimeout(resolve, 5000));
      });
    } else {
      await run();
    }
  } finally {
    record.answering = false;
  }
}
