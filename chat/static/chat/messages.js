// Messages: one entry per message in `state.messages`, its element kept in `seq` order and
// rendered again as its data changes (markdown for replies, in settled blocks while they
// stream; card bodies for tool calls, approvals and plans); streaming deltas applied by offset,
// gaps noted and asked for again; each message's actions (its versions `‹ 2 / 3 ›`, Edit,
// Regenerate: built here, handled by versions.js); the bubbles of sends the server has not
// confirmed yet (`dropSend`); and the composer's state while a reply runs or a send is out.

import { renderMarkdown } from "./markdown.js";
import { agentName, CARD_TYPES, codePoints, dateFormat, dom, h, isNearBottom, pretty, scrollToBottom, state, STATUS_LABELS, timeFormat, updateEmpty } from "./state.js";
import { renderReactions } from "./reactions.js";
import { CARD_STATUS, cardState, placePendingCards, resolvePendingFromMessage } from "./cards.js";

// Messages ---------------------------------------------------------------------

function seqOf(node) {
  const value = node.dataset && node.dataset.seq;
  return value === undefined ? null : Number(value);
}

// Messages are kept in `seq` order; cards and notes stay after the message they follow.
function insertBySeq(node, seq) {
  let before = null;
  for (let child = dom.messages.lastElementChild; child; child = child.previousElementSibling) {
    const childSeq = seqOf(child);
    if (childSeq === null) continue;
    if (childSeq > seq) before = child;
    else break;
  }
  dom.messages.insertBefore(node, before);
}

function authorOf(data) {
  if (data.role === "user") return "You";
  if (data.role === "assistant") return agentName(data.agent);
  if (data.role === "tool") return "Tool";
  return "System";
}

function buildMessageElement(entry) {
  const data = entry.data;
  const card = CARD_TYPES.has(data.type);
  const article = h("article", {
    class: `msg msg--${data.role}${card ? " msg--card" : ""}`,
    dataset: { id: data.id, seq: data.seq ?? Infinity, role: data.role, type: data.type },
    "aria-label": `${authorOf(data)}${data.type !== "text" ? ` (${data.type.replace("_", " ")})` : ""}`,
  });
  const avatar = h("div", { class: "msg__avatar", "aria-hidden": "true" }, data.role === "user" ? "You" : "AI");
  const meta = h(
    "header",
    { class: "msg__meta" },
    h("span", { class: "msg__author" }),
    h("time", { class: "msg__time" }),
    h("span", { class: "badge msg__badge", hidden: true }),
    h("span", { class: "msg__tools" }),
  );
  const body = h("div", { class: "msg__body" });
  const error = h("p", { class: "msg__error", role: "note", hidden: true });
  const reactions = h("div", { class: "reactions", role: "group", "aria-label": "Reactions" });
  const actions = h("div", { class: "msg__actions", hidden: true });
  const main = h("div", { class: "msg__main" }, meta, body, error, reactions, actions);
  article.append(avatar, main);
  entry.el = article;
  return article;
}

function cardBadges(data) {
  const { status, progress } = cardState(data);
  if (!status) return [];
  const badge = (tone, label) => h("span", { class: `badge card__badge badge--${tone}`, text: label });
  if (data.type === "plan" && progress) {
    return [badge("approved", CARD_STATUS.approved.label), badge(CARD_STATUS[progress].tone, CARD_STATUS[progress].label)];
  }
  const known = CARD_STATUS[status];
  return [known ? badge(known.tone, known.label) : badge("waiting", status.replaceAll("_", " "))];
}

function renderCardBody(data, body) {
  const meta = data.metadata || {};
  const parts = [];
  const title = (label, name) => h("p", { class: "card__title" }, h("span", { class: "card__kind", text: label }), name ? h("code", { text: name }) : null);
  const details = (label, value) =>
    value === undefined || value === null || value === ""
      ? null
      : h("details", { class: "card__details" }, h("summary", { text: label }), h("pre", { text: pretty(value).slice(0, 4000) }));
  if (data.type === "tool_call") {
    parts.push(title("Tool call", meta.name || meta.tool));
    parts.push(details("Arguments", meta.arguments ?? (data.content || null)));
  } else if (data.type === "tool_result") {
    parts.push(title(meta.is_error ? "Tool error" : "Tool result", meta.name || meta.tool));
    parts.push(details("Output", meta.output ?? data.content));
  } else if (data.type === "approval") {
    parts.push(title("Approval", meta.tool || meta.name));
    parts.push(details("Arguments", meta.arguments));
    if (data.content) parts.push(h("p", { class: "card__text", text: data.content }));
  } else if (data.type === "plan") {
    parts.push(title("Plan"));
    const steps = Array.isArray(meta.steps) ? meta.steps : [];
    if (steps.length) {
      parts.push(h("ol", { class: "plan-steps" }, steps.map((s) => h("li", {}, h("strong", { text: agentName(s.agent) }), " ", s.instruction || ""))));
    } else if (data.content) {
      parts.push(h("p", { class: "card__text", text: data.content }));
    }
  } else {
    parts.push(h("p", { class: "card__text", text: data.content || "" }));
  }
  const badges = cardBadges(data);
  if (badges.length) parts.push(h("p", { class: "card__badges" }, badges));
  const { decision, progress } = cardState(data);
  const article = body.closest("article");
  if (article) {
    if (decision) article.dataset.decision = decision;
    else delete article.dataset.decision;
    if (progress) article.dataset.progress = progress;
    else delete article.dataset.progress;
  }
  body.replaceChildren(...parts.filter(Boolean));
}

function renderMessage(entry) {
  entry.dirty = false;
  const { data, el } = entry;
  const stick = isNearBottom();
  el.dataset.status = data.status;
  el.dataset.length = String(entry.length);
  el.setAttribute("aria-busy", String(data.status === "streaming"));
  el.querySelector(".msg__author").textContent = authorOf(data);
  const time = el.querySelector(".msg__time");
  if (data.created_at) {
    time.dateTime = data.created_at;
    time.textContent = timeFormat.format(new Date(data.created_at));
    time.title = dateFormat.format(new Date(data.created_at));
  }
  const badge = el.querySelector(".msg__badge");
  const label = STATUS_LABELS[data.status];
  badge.hidden = !label;
  badge.textContent = label || "";
  badge.className = `badge msg__badge badge--${data.status}`;
  const body = el.querySelector(".msg__body");
  if (CARD_TYPES.has(data.type)) {
    renderCardBody(data, body);
  } else if (data.role === "user") {
    body.textContent = entry.text;
  } else if (!entry.text && data.status === "streaming") {
    body.replaceChildren(h("span", { class: "typing", "aria-label": "Writing a reply" }, h("span"), h("span"), h("span")));
  } else {
    renderReplyBody(entry, body, data.status === "streaming");
  }
  body.classList.toggle("msg__body--streaming", data.status === "streaming" && !!entry.text);
  const error = el.querySelector(".msg__error");
  error.hidden = !data.error;
  error.textContent = data.error || "";
  renderReactions(entry);
  renderActions(entry);
  if (stick) scrollToBottom();
}

// The message's actions: its versions (`‹ 2 / 3 ›`, when it has more than one), Edit on the
// user's own text messages, Regenerate on an assistant's text reply that has ended. Built again
// only when what they depend on changes (a streaming reply renders every frame).
function renderActions(entry) {
  const { data, el } = entry;
  const box = el.querySelector(".msg__actions");
  const versions = Array.isArray(data.versions) ? data.versions : [];
  const at = versions.indexOf(data.id);
  const saved = Number.isFinite(data.seq) && data.type === "text" && data.status !== "streaming";
  const edit = saved && data.role === "user";
  const regenerate = saved && data.role === "assistant";
  const key = `${versions.length > 1 && at >= 0 ? versions.join() : ""}|${at}|${edit}|${regenerate}`;
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  const parts = [];
  if (versions.length > 1 && at >= 0) {
    const step = (target, label, symbol) =>
      h("button", { type: "button", class: "btn btn--icon btn--tiny msg__action", dataset: target ? { action: "version", target } : { action: "version", end: "true" }, "aria-label": label, title: label }, symbol);
    parts.push(
      h(
        "span",
        { class: "versions", role: "group", "aria-label": `Version ${at + 1} of ${versions.length}` },
        step(versions[at - 1] || "", "Previous version", "‹"),
        h("span", { class: "versions__label", "aria-hidden": "true", text: `${at + 1} / ${versions.length}` }),
        step(versions[at + 1] || "", "Next version", "›"),
      ),
    );
  }
  const button = (action, label, symbol, text) =>
    h("button", { type: "button", class: "btn btn--ghost btn--tiny msg__action msg__action--hover", dataset: { action }, "aria-label": label, title: label }, h("span", { "aria-hidden": "true" }, symbol), ` ${text}`);
  if (edit) parts.push(button("edit", "Edit this message", "✎", "Edit"));
  if (regenerate) parts.push(button("regenerate", "Regenerate this reply", "↻", "Regenerate"));
  for (const part of parts) for (const b of part.matches("button") ? [part] : part.querySelectorAll("button")) setActionDisabled(b);
  box.replaceChildren(...parts);
  box.hidden = !parts.length;
}

// While a turn runs (or a send, a queued message, a regenerate or a switch is under way) the
// actions wait: the server would refuse them as busy. The first and last versions have no
// neighbour on one side (`data-end`).
function setActionDisabled(button) {
  button.disabled = state.actionsBusy || button.dataset.end === "true";
}

function setActionsBusy(busy) {
  if (busy === state.actionsBusy) return;
  state.actionsBusy = busy;
  for (const button of dom.messages.querySelectorAll(".msg__action")) setActionDisabled(button);
}

// A streaming reply is rendered in two parts: the blocks that can no longer change (everything up
// to the last blank line outside a code fence), each rendered once and kept, and the tail after
// them, rendered again on every frame. Rendering the whole reply on every frame is quadratic in
// its length: a 50,000-character reply would spend the stream re-parsing what it showed already.
// Once the reply has ended it is rendered whole, once (where a list or a reference link spans a
// blank line, that is the form that counts).
function renderReplyBody(entry, body, streaming) {
  if (!streaming) {
    entry.blocks = null;
    body.replaceChildren(renderMarkdown(entry.text));
    return;
  }
  let blocks = entry.blocks;
  if (!blocks || blocks.stable.parentNode !== body || !entry.text.startsWith(blocks.text)) {
    // First render, or the text was replaced (a snapshot): start over.
    blocks = entry.blocks = { text: "", end: 0, stable: h("div", { class: "md-stable" }), tail: h("div", { class: "md-tail" }) };
    body.replaceChildren(blocks.stable, blocks.tail);
  }
  const end = stableEnd(entry.text, blocks.end);
  if (end > blocks.end) {
    blocks.stable.append(renderMarkdown(entry.text.slice(blocks.end, end)));
    blocks.end = end;
    blocks.text = entry.text.slice(0, end);
  }
  blocks.tail.replaceChildren(renderMarkdown(entry.text.slice(end)));
}

// Where the settled blocks of `text` end, looking from `from` (itself such an end): just after
// the last blank line that is outside a fenced code block and followed by a whole line.
const FENCE = /^ {0,3}(`{3,}|~{3,})/;
function stableEnd(text, from) {
  let end = from;
  let fence = null;
  let at = from;
  for (;;) {
    const newline = text.indexOf("\n", at);
    if (newline === -1) return end; // the last line is still being written
    const line = text.slice(at, newline);
    const mark = FENCE.exec(line);
    if (fence) {
      if (mark && mark[1][0] === fence[0] && mark[1].length >= fence.length && line.trim() === mark[1]) fence = null;
    } else if (mark) {
      fence = mark[1];
    } else if (!line.trim() && at > from) {
      end = newline + 1;
    }
    at = newline + 1;
  }
}

export function scheduleRender(entry) {
  if (entry.dirty) return;
  entry.dirty = true;
  requestAnimationFrame(() => {
    if (entry.dirty && entry.el && entry.el.isConnected) renderMessage(entry);
  });
}

export function setText(entry, text) {
  entry.text = text;
  entry.length = codePoints(text);
}

export function upsertMessage(data) {
  let entry = state.messages.get(data.id);
  const stick = isNearBottom();
  if (!entry) {
    entry = { data: { ...data }, text: "", length: 0, el: null, dirty: false };
    setText(entry, data.content || "");
    state.messages.set(data.id, entry);
    buildMessageElement(entry);
    insertBySeq(entry.el, data.seq ?? Infinity);
  } else {
    const oldSeq = entry.data.seq;
    const wasStreaming = entry.data.status === "streaming";
    const merged = { ...entry.data, ...data };
    if (data.reactions === undefined) merged.reactions = entry.data.reactions;
    // Versions are only ever added: a shorter list (a frame that did not count them) is stale.
    const known = entry.data.versions;
    if (Array.isArray(known) && (!Array.isArray(data.versions) || (data.versions.length < known.length && data.versions.every((v) => known.includes(v))))) {
      merged.versions = known;
    }
    // A streaming snapshot may be behind what the socket already delivered: keep the longer text.
    if (data.status === "streaming" && wasStreaming) {
      const content = data.content || "";
      if (codePoints(content) > entry.length) setText(entry, content);
    } else if (data.status === "streaming" && !wasStreaming) {
      // Already finished here; a late snapshot must not bring the text back to life.
      merged.status = entry.data.status;
      merged.content = entry.text;
    } else {
      setText(entry, data.content ?? entry.text);
    }
    entry.data = merged;
    if (data.seq !== undefined && data.seq !== oldSeq) {
      entry.el.dataset.seq = data.seq;
      entry.el.remove();
      insertBySeq(entry.el, data.seq);
    }
  }
  if (data.client_id) dropSend(data.client_id, false);
  if (data.status !== "streaming") {
    entry.gap = false;
    entry.gapEnd = 0;
  } else {
    fillGap(entry);
  }
  renderMessage(entry);
  resolvePendingFromMessage(entry.data);
  placePendingCards();
  updateComposer();
  updateEmpty();
  if (stick) scrollToBottom();
  return entry;
}

export function applyDelta(frame) {
  let entry = state.messages.get(frame.message_id);
  const delta = frame.delta || "";
  const offset = Number(frame.offset) || 0;
  if (!entry) {
    // A reply this page has not heard of. From its start it is simply shown; from the middle it
    // is a placeholder with a gap, which the catch-up delta, `message.completed` or a `resync`
    // (after the gap timer) fills.
    entry = upsertMessage({ id: frame.message_id, role: "assistant", type: "text", status: "streaming", content: offset === 0 ? delta : "", reactions: [] });
    if (offset > 0) markGap(entry, offset + codePoints(delta));
    return;
  }
  if (entry.data.status !== "streaming") return;
  const length = entry.length;
  if (offset === length) {
    entry.text += delta;
    entry.length += codePoints(delta);
  } else if (offset < length) {
    const chars = [...delta];
    const end = offset + chars.length;
    if (end <= length) return;
    const extra = chars.slice(length - offset).join("");
    entry.text += extra;
    entry.length = end;
  } else {
    markGap(entry, offset + codePoints(delta));
    return;
  }
  fillGap(entry);
  scheduleRender(entry);
}

// A delta beyond the end was dropped: the text up to `gapEnd` is still owed.
function markGap(entry, end) {
  entry.gap = true;
  entry.gapEnd = Math.max(entry.gapEnd || 0, end);
  noteGap();
}

// The text has caught up with everything dropped: the gap is closed.
export function fillGap(entry) {
  if (entry.gap && entry.length >= (entry.gapEnd || 0)) {
    entry.gap = false;
    entry.gapEnd = 0;
  }
}

// A gap is normally filled by the catch-up delta or `message.completed`; if it is still
// open a moment later, ask the server for a fresh snapshot.
function noteGap() {
  if (state.gapTimer) return;
  const generation = state.generation;
  state.gapTimer = setTimeout(() => {
    state.gapTimer = null;
    if (generation !== state.generation) return;
    const open = [...state.messages.values()].some((e) => e.gap && e.data.status === "streaming");
    if (open && state.socket) state.socket.send({ type: "resync" });
  }, 1500);
}

export function removeEntry(entry) {
  if (state.messages.get(entry.data.id) !== entry) return;
  state.messages.delete(entry.data.id);
  entry.el.remove();
  updateComposer();
  updateEmpty();
}

export function runningReplies() {
  return [...state.messages.values()].filter((e) => e.data.status === "streaming");
}

// While a reply runs the session's `on_busy` decides: with "reject" the box waits for the reply;
// with "enqueue" or "interrupt" it stays usable and what is sent is queued, or stops the reply.
export function updateComposer() {
  const running = runningReplies().length > 0;
  const sending = state.sends.size > 0;
  const onBusy = (state.current && state.current.on_busy) || "reject";
  const meanwhile = running && onBusy !== "reject";
  const disabled = sending || (running && !meanwhile);
  if (disabled && document.activeElement === dom.input) state.hadFocus = true;
  dom.input.disabled = disabled;
  dom.input.placeholder = !meanwhile ? "Write a message…" : onBusy === "interrupt" ? "Write a message to interrupt the reply…" : "Write a message to queue…";
  dom.send.disabled = disabled || !dom.input.value.trim();
  dom.stop.hidden = !running;
  dom.composer.dataset.state = running ? "running" : sending ? "sending" : "idle";
  setActionsBusy(running || sending || state.queued.length > 0 || state.acting);
  if (!disabled && state.hadFocus) {
    state.hadFocus = false;
    dom.input.focus();
  }
}

// The bubble of a send goes when the server has its message (or refused it).
export function dropSend(clientId, refresh = true) {
  const send = state.sends.get(clientId);
  if (!send) return;
  send.el.remove();
  // An edit's bubble stood in for the message it edits: that one shows again until its branch goes.
  if (send.original) send.original.hidden = false;
  state.sends.delete(clientId);
  if (refresh) {
    updateComposer();
    updateEmpty();
  }
}
