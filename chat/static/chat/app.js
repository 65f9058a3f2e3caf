// The chat page: sessions, history, live streaming over the session socket, reactions,
// agents, and the cards of tool calls, approvals and plans.
//
// The server is the source of truth. Frames carry ids and offsets: deltas are applied by
// offset (repeats dropped, gaps left for the catch-up delta or `message.completed` to fill),
// and after every `session.ready` (each connect) the tail of the history is fetched again.

import { api, relativeUrl, ApiError } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { ChatSocket } from "./socket.js";
import { initSearch } from "./search.js";
import { runClientTool } from "./tools.js";

const EMOJIS = ["👍", "👎", "❤️", "😂", "🎉", "😮"];
const PAGE_SIZE = 100;
const STATUS_LABELS = { cancelled: "Stopped", failed: "Failed", interrupted: "Interrupted" };
const CARD_TYPES = new Set(["tool_call", "tool_result", "approval", "plan", "event"]);

const $ = (id) => document.getElementById(id);
const dom = {
  app: $("app"),
  sidebar: $("sidebar"),
  scrim: $("scrim"),
  toggleSidebar: $("toggle-sidebar"),
  sessionList: $("session-list"),
  sessionsEmpty: $("sessions-empty"),
  sessionsMore: $("sessions-more"),
  newSession: $("new-session"),
  title: $("session-title"),
  usage: $("session-usage"),
  controls: $("session-controls"),
  mode: $("mode-select"),
  agent: $("agent-select"),
  conn: $("conn"),
  notice: $("notice"),
  conversation: $("conversation"),
  messages: $("messages"),
  older: $("older"),
  loadOlder: $("load-older"),
  empty: $("empty-state"),
  composer: $("composer"),
  input: $("composer-input"),
  send: $("send-button"),
  stop: $("stop-button"),
};

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Offsets count characters as the server does (Unicode code points), not UTF-16 units.
const codePoints = (text) => {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
};

function uuid4() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, "0")).join("");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
function shortWhen(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const now = new Date();
  if (date.toDateString() === now.toDateString()) return timeFormat.format(date);
  return new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" }).format(date);
}

function pretty(value) {
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

// State ------------------------------------------------------------------------

const state = {
  sessions: new Map(),
  sessionsNext: null,
  agents: [],
  agentsBySlug: new Map(),
  current: null,
  socket: null,
  generation: 0,
  messages: new Map(), // id -> {data, text, length, el, dirty}
  sends: new Map(), // client_id -> {el, content, sent, rest}: messages not yet confirmed by the server
  pending: new Map(), // "kind:id" -> {item, el, decided}
  olderUrl: null,
  queue: null, // frames held while history loads
  readySeen: 0,
  readyWaiters: [],
  gapTimer: null,
  loadingOlder: false,
  hadFocus: false,
  renaming: null, // {id, li, cancel}: the list item whose title is being edited
};

function sessionTitle(session) {
  return (session && session.title) || "New chat";
}

function agentName(slug) {
  const agent = slug && state.agentsBySlug.get(slug);
  return agent ? agent.name : slug || "Assistant";
}

// Notices ----------------------------------------------------------------------

let noticeTimer = null;
function showNotice(text, kind = "error") {
  dom.notice.querySelector(".notice__text").textContent = text;
  dom.notice.dataset.kind = kind;
  dom.notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (dom.notice.hidden = true), 8000);
}
dom.notice.querySelector(".notice__close").addEventListener("click", () => (dom.notice.hidden = true));

function errorText(err) {
  if (err instanceof ApiError) return err.message;
  return (err && err.message) || "Something went wrong.";
}

// Connection indicator ---------------------------------------------------------

const CONN_LABELS = { connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…", offline: "Offline" };
function setConnState(connState) {
  dom.conn.dataset.state = connState;
  dom.conn.querySelector(".conn__label").textContent = CONN_LABELS[connState] || connState;
  dom.conn.title = connState === "reconnecting" ? "The connection dropped; retrying automatically." : CONN_LABELS[connState];
}

// Sidebar ----------------------------------------------------------------------

function setSidebar(open) {
  dom.app.dataset.sidebar = open ? "open" : "closed";
  dom.toggleSidebar.setAttribute("aria-expanded", String(open));
  dom.scrim.hidden = !open;
  if (open) dom.sidebar.querySelector("button, [href]")?.focus();
}
dom.toggleSidebar.addEventListener("click", () => setSidebar(dom.app.dataset.sidebar !== "open"));
dom.scrim.addEventListener("click", () => setSidebar(false));

function sortedSessions() {
  return [...state.sessions.values()].sort((a, b) => (a.updated_at < b.updated_at ? 1 : a.updated_at > b.updated_at ? -1 : 0));
}

function renderSessionList() {
  const renaming = state.renaming;
  if (renaming && (!state.sessions.has(renaming.id) || !renaming.li.isConnected)) renaming.cancel();
  const items = sortedSessions().map((session) => {
    const current = state.current && state.current.id === session.id;
    const title = sessionTitle(session);
    const li = h("li", { class: "session", dataset: { id: session.id } });
    if (current) li.classList.add("session--current");
    const open = h(
      "button",
      { type: "button", class: "session__open", dataset: { action: "open" }, "aria-current": current ? "true" : null },
      h("span", { class: "session__title", text: title }),
      h("span", { class: "session__when", text: shortWhen(session.updated_at) }),
    );
    const actions = h(
      "span",
      { class: "session__actions" },
      h("button", { type: "button", class: "btn btn--icon btn--tiny", dataset: { action: "rename" }, "aria-label": `Rename “${title}”`, title: "Rename" }, "✎"),
      h("button", { type: "button", class: "btn btn--icon btn--tiny btn--danger", dataset: { action: "delete" }, "aria-label": `Delete “${title}”`, title: "Delete" }, "🗑"),
    );
    li.append(open, actions);
    return li;
  });
  const keep = state.renaming ? state.renaming.li : null;
  const at = keep ? items.findIndex((li) => li.dataset.id === keep.dataset.id) : -1;
  if (keep && at >= 0) {
    // The item being renamed stays as it is (its input keeps focus, text and caret); the others
    // are rebuilt around it, in the new order. It is rebuilt when the rename ends.
    keep.classList.toggle("session--current", !!(state.current && state.current.id === keep.dataset.id));
    for (const child of [...dom.sessionList.children]) if (child !== keep) child.remove();
    for (const li of items.slice(0, at)) dom.sessionList.insertBefore(li, keep);
    for (const li of items.slice(at + 1).reverse()) keep.after(li);
  } else {
    dom.sessionList.replaceChildren(...items);
  }
  dom.sessionsEmpty.hidden = items.length > 0;
  dom.sessionsMore.hidden = !state.sessionsNext;
}

function upsertSession(session) {
  state.sessions.set(session.id, { ...(state.sessions.get(session.id) || {}), ...session });
  if (state.current && state.current.id === session.id) {
    state.current = state.sessions.get(session.id);
    renderHeader();
  }
  renderSessionList();
}

function removeSession(id) {
  state.sessions.delete(id);
  renderSessionList();
}

async function loadSessions(url) {
  const page = await api.sessions(url);
  for (const session of page.results) state.sessions.set(session.id, session);
  state.sessionsNext = relativeUrl(page.next);
  renderSessionList();
}

dom.sessionsMore.addEventListener("click", () => loadSessions(state.sessionsNext).catch((e) => showNotice(errorText(e))));

dom.sessionList.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const li = button.closest("li.session");
  const id = li && li.dataset.id;
  if (!id) return;
  const action = button.dataset.action;
  if (action === "open") {
    if (!state.current || state.current.id !== id) selectSession(id);
    setSidebar(false);
  } else if (action === "rename") {
    startRename(li, id);
  } else if (action === "delete") {
    confirmDelete(button, id);
  } else if (action === "confirm-delete") {
    deleteSession(id);
  }
});

function startRename(li, id) {
  const session = state.sessions.get(id);
  if (state.renaming) state.renaming.cancel();
  const input = h("input", { type: "text", class: "session__rename", value: session.title || "", maxlength: 200, "aria-label": "Chat title" });
  const open = li.querySelector(".session__open");
  open.replaceWith(input);
  let done = false;
  const rename = {
    id,
    li,
    cancel: () => {
      done = true;
      if (state.renaming === rename) state.renaming = null;
    },
  };
  state.renaming = rename;
  input.focus();
  input.select();
  const finish = async (save) => {
    if (done) return;
    rename.cancel();
    const title = input.value.trim();
    const saved = state.sessions.get(id);
    if (save && saved && title !== (saved.title || "")) {
      try {
        upsertSession(await api.updateSession(id, { title }));
      } catch (err) {
        showNotice(errorText(err));
        renderSessionList();
      }
    } else {
      renderSessionList();
    }
    li.isConnected && li.querySelector(".session__open")?.focus();
    dom.sessionList.querySelector(`li[data-id="${id}"] [data-action="rename"]`)?.focus();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      finish(true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
}

function confirmDelete(button, id) {
  button.dataset.action = "confirm-delete";
  button.classList.add("btn--confirm");
  button.textContent = "Delete?";
  button.setAttribute("aria-label", "Confirm: delete this chat");
  setTimeout(() => {
    if (button.isConnected && button.dataset.action === "confirm-delete") renderSessionList();
  }, 4000);
}

async function deleteSession(id) {
  try {
    await api.deleteSession(id);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) {
      showNotice(errorText(err));
      return;
    }
  }
  sessionGone(id, false);
}

function sessionGone(id, notify) {
  removeSession(id);
  if (state.current && state.current.id === id) {
    if (notify) showNotice("This chat was deleted.", "info");
    const next = sortedSessions()[0];
    if (next) selectSession(next.id);
    else clearSession();
  }
}

dom.newSession.addEventListener("click", async () => {
  try {
    const session = await api.createSession({});
    upsertSession(session);
    await selectSession(session.id);
    setSidebar(false);
    dom.input.focus();
  } catch (err) {
    showNotice(errorText(err));
  }
});

// Header: title, mode and agent ------------------------------------------------

function renderAgents() {
  const current = state.current;
  const options = [];
  if (current && current.mode !== "direct") {
    options.push(h("option", { value: "", text: "Automatic" }));
  }
  for (const agent of state.agents) {
    options.push(h("option", { value: agent.slug, text: agent.name, title: agent.description }));
  }
  dom.agent.replaceChildren(...options);
  dom.agent.value = current && current.mode === "direct" ? current.agent || "" : "";
  dom.agent.disabled = !current || current.mode !== "direct";
  dom.agent.title = dom.agent.disabled ? "The orchestrator picks an agent for each message" : "The agent that answers";
}

function renderHeader() {
  const current = state.current;
  dom.title.textContent = current ? sessionTitle(current) : "Chat";
  document.title = current ? `${sessionTitle(current)} · Chat` : "Chat";
  dom.controls.hidden = !current;
  if (current) dom.mode.value = current.mode || "orchestrated";
  renderUsage(current);
  renderAgents();
}

// The chat's tokens, as its replies' providers reported them (the session's `usage`, kept
// up to date by `message.completed`'s `session_usage`).
function renderUsage(current) {
  const usage = current && current.usage;
  const total = usage ? usage.total_tokens : 0;
  dom.usage.hidden = !total;
  if (!total) return;
  const number = (n) => n.toLocaleString("en-US");
  dom.usage.textContent = `${number(total)} token${total === 1 ? "" : "s"}`;
  dom.usage.title = `This chat so far: ${number(usage.prompt_tokens)} prompt + ${number(usage.completion_tokens)} completion tokens`;
}

function firstDirectAgent() {
  const agent = state.agents.find((a) => a.slug !== "orchestrator") || state.agents[0];
  return agent ? agent.slug : null;
}

dom.mode.addEventListener("change", async () => {
  const current = state.current;
  if (!current) return;
  const mode = dom.mode.value;
  const body = mode === "direct" ? { mode, agent: current.agent || firstDirectAgent() } : { mode };
  try {
    upsertSession(await api.updateSession(current.id, body));
  } catch (err) {
    showNotice(errorText(err));
    renderHeader();
  }
});

dom.agent.addEventListener("change", async () => {
  const current = state.current;
  const slug = dom.agent.value;
  if (!current || !slug) return;
  if (state.socket && state.socket.send({ type: "switch_agent", agent: slug, request_id: "switch_agent" })) return;
  try {
    upsertSession(await api.updateSession(current.id, { agent: slug }));
  } catch (err) {
    showNotice(errorText(err));
    renderHeader();
  }
});

// Messages ---------------------------------------------------------------------

function isNearBottom() {
  const c = dom.conversation;
  return c.scrollHeight - c.scrollTop - c.clientHeight < 80;
}

function scrollToBottom() {
  dom.conversation.scrollTop = dom.conversation.scrollHeight;
}

function updateEmpty() {
  dom.empty.hidden = state.messages.size > 0 || state.sends.size > 0 || state.pending.size > 0 || state.queue !== null;
}

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
  const main = h("div", { class: "msg__main" }, meta, body, error, reactions);
  article.append(avatar, main);
  entry.el = article;
  return article;
}

// The server keeps where a card message stands in `metadata.status`:
//   approval: pending → approved | rejected (or superseded: a new message was sent instead)
//   plan: pending → running → done | failed, or rejected
//   tool_call: requested, awaiting_approval, awaiting_client, approved, running, done, failed, rejected
// This one table turns it into the decision and progress the page shows: the badges of history
// cards, and the state of the live cards that follow those messages.
const CARD_STATUS = {
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

function cardState(data) {
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

function renderReactions(entry) {
  const container = entry.el.querySelector(".reactions");
  const tools = entry.el.querySelector(".msg__tools");
  const data = entry.data;
  if (data.type !== "text" || data.status === "streaming" || !data.seq || data.seq === Infinity) {
    container.replaceChildren();
    container.hidden = true;
    if (!(picker && tools.contains(picker.el))) tools.replaceChildren();
    return;
  }
  container.hidden = !(data.reactions || []).length;
  const chips = (data.reactions || []).map((r) =>
    h(
      "button",
      {
        type: "button",
        class: `chip${r.me ? " chip--me" : ""}`,
        dataset: { action: "toggle-reaction", emoji: r.emoji },
        "aria-pressed": String(!!r.me),
        "aria-label": `${r.emoji} ${r.count} ${r.count === 1 ? "reaction" : "reactions"}${r.me ? ", including yours" : ""}`,
      },
      h("span", { class: "chip__emoji", "aria-hidden": "true", text: r.emoji }),
      h("span", { class: "chip__count", "aria-hidden": "true", text: String(r.count) }),
    ),
  );
  const add = h(
    "button",
    { type: "button", class: "chip chip--add", dataset: { action: "open-picker" }, "aria-label": "Add a reaction", "aria-haspopup": "true", "aria-expanded": "false", title: "Add a reaction" },
    h("span", { "aria-hidden": "true" }, "☺︎+"),
  );
  container.replaceChildren(...chips);
  // An open picker stays open while the reactions change under it.
  if (!(picker && tools.contains(picker.el))) tools.replaceChildren(add);
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
  if (stick) scrollToBottom();
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

function scheduleRender(entry) {
  if (entry.dirty) return;
  entry.dirty = true;
  requestAnimationFrame(() => {
    if (entry.dirty && entry.el && entry.el.isConnected) renderMessage(entry);
  });
}

function setText(entry, text) {
  entry.text = text;
  entry.length = codePoints(text);
}

function upsertMessage(data) {
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

function applyDelta(frame) {
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
function fillGap(entry) {
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

function removeEntry(entry) {
  if (state.messages.get(entry.data.id) !== entry) return;
  state.messages.delete(entry.data.id);
  entry.el.remove();
  updateComposer();
  updateEmpty();
}

function runningReplies() {
  return [...state.messages.values()].filter((e) => e.data.status === "streaming");
}

function updateComposer() {
  const running = runningReplies().length > 0;
  const sending = state.sends.size > 0;
  const disabled = running || sending;
  if (disabled && document.activeElement === dom.input) state.hadFocus = true;
  dom.input.disabled = disabled;
  dom.send.disabled = disabled || !dom.input.value.trim();
  dom.stop.hidden = !running;
  dom.composer.dataset.state = running ? "running" : sending ? "sending" : "idle";
  if (!disabled && state.hadFocus) {
    state.hadFocus = false;
    dom.input.focus();
  }
}

// History ----------------------------------------------------------------------

// Opening a chat reads one page: the newest. Older pages follow `previous` when scrolling up.
async function loadHistory(generation, sessionId) {
  const page = await api.messages(api.latestMessagesUrl(sessionId, PAGE_SIZE));
  if (generation !== state.generation) return;
  state.olderUrl = relativeUrl(page.previous);
  for (const message of page.results) upsertMessage(message);
  dom.older.hidden = !state.olderUrl;
}

function highestSeq() {
  let seq = 0;
  for (const entry of state.messages.values()) if (Number.isFinite(entry.data.seq) && entry.data.seq > seq) seq = entry.data.seq;
  return seq;
}

// After a reconnect: whatever was created or finished while away. Reads from the newest page
// back until a page reaches what is already known (its first seq is at most the highest known
// seq + 1) or there is no older page, so nothing in between is missed however much happened.
async function refreshTail(generation) {
  if (!state.current) return;
  const known = highestSeq();
  let url = api.latestMessagesUrl(state.current.id, PAGE_SIZE);
  const pages = [];
  for (;;) {
    const page = await api.messages(url);
    if (generation !== state.generation) return;
    pages.push(page);
    const results = page.results || [];
    if (!results.length || results[0].seq <= known + 1 || !page.previous) break;
    url = relativeUrl(page.previous);
  }
  for (const page of pages.reverse()) for (const message of page.results) upsertMessage(message);
}

async function loadOlder() {
  if (!state.olderUrl || state.loadingOlder) return;
  state.loadingOlder = true;
  const generation = state.generation;
  const c = dom.conversation;
  let loaded = false;
  try {
    const page = await api.messages(state.olderUrl);
    if (generation !== state.generation) return;
    const before = c.scrollHeight;
    const top = c.scrollTop;
    for (const message of page.results) upsertMessage(message);
    c.scrollTop = top + (c.scrollHeight - before);
    state.olderUrl = relativeUrl(page.previous);
    dom.older.hidden = !state.olderUrl;
    loaded = true;
  } catch (err) {
    if (generation === state.generation) showNotice(errorText(err));
  } finally {
    if (generation === state.generation) state.loadingOlder = false;
  }
  if (loaded) maybeLoadOlder();
}

// Near the top (or too little history to scroll at all) the next older page comes in.
function maybeLoadOlder() {
  if (dom.conversation.scrollTop < 150 && state.olderUrl && state.queue === null) loadOlder();
}
dom.loadOlder.addEventListener("click", loadOlder);
dom.conversation.addEventListener("scroll", maybeLoadOlder);

// Pending tool calls, approvals and plans ---------------------------------------

const KIND_OF_FRAME = { "tool.call": "tool_call", "approval.requested": "approval", "plan.proposed": "plan" };
const ID_FIELD = { tool_call: "tool_call_id", approval: "approval_id", plan: "plan_id" };

function pendingKey(kind, id) {
  return `${kind}:${id}`;
}

function addPending(item) {
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

function placePendingCards() {
  for (const record of state.pending.values()) {
    const host = record.item.message_id && state.messages.get(record.item.message_id);
    if (host && record.el.previousElementSibling !== host.el && !record.placedAfterHost) {
      record.placedAfterHost = true;
      placePendingCard(record);
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

function markPending(record, decided, text) {
  record.decided = decided;
  record.el.dataset.state = decided || "open";
  record.el.querySelector(".pending__status").textContent = text || "";
  for (const button of record.el.querySelectorAll("button[data-action=decide]")) button.disabled = !!decided;
}

function resolvePending(key, decided, text) {
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

function resolvePendingFromMessage(data) {
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
function syncPending(items) {
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
async function answerToolCall(record) {
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

// Reactions ----------------------------------------------------------------------

let picker = null;
function closePicker(focusBack = false) {
  if (!picker) return;
  const { el, opener } = picker;
  el.remove();
  opener.setAttribute("aria-expanded", "false");
  picker = null;
  if (focusBack && opener.isConnected) opener.focus();
}

function openPicker(opener, entry) {
  const reopen = picker && picker.opener === opener;
  closePicker();
  if (reopen) return;
  const menu = h(
    "div",
    { class: "picker", role: "menu", "aria-label": "Choose a reaction" },
    EMOJIS.map((emoji) => h("button", { type: "button", class: "picker__item", role: "menuitem", dataset: { emoji }, "aria-label": `React with ${emoji}` }, emoji)),
  );
  menu.addEventListener("click", (event) => {
    const item = event.target.closest("[data-emoji]");
    if (!item) return;
    closePicker(true);
    const existing = (entry.data.reactions || []).find((r) => r.emoji === item.dataset.emoji);
    if (!existing || !existing.me) toggleReaction(entry, item.dataset.emoji);
  });
  menu.addEventListener("keydown", (event) => {
    const items = [...menu.querySelectorAll("button")];
    const index = items.indexOf(document.activeElement);
    if (event.key === "ArrowRight" || event.key === "ArrowDown") {
      event.preventDefault();
      items[(index + 1) % items.length].focus();
    } else if (event.key === "ArrowLeft" || event.key === "ArrowUp") {
      event.preventDefault();
      items[(index - 1 + items.length) % items.length].focus();
    } else if (event.key === "Escape") {
      event.preventDefault();
      closePicker(true);
    }
  });
  opener.after(menu);
  opener.setAttribute("aria-expanded", "true");
  picker = { el: menu, opener };
  menu.querySelector("button").focus();
}

document.addEventListener("click", (event) => {
  if (picker && !picker.el.contains(event.target) && event.target !== picker.opener && !picker.opener.contains(event.target)) closePicker();
});

function setReactions(messageId, reactions) {
  const entry = state.messages.get(messageId);
  if (!entry) return;
  entry.data.reactions = reactions;
  const focused = document.activeElement && entry.el.contains(document.activeElement) ? document.activeElement.dataset : null;
  renderReactions(entry);
  if (focused && focused.action) {
    const selector = focused.emoji ? `[data-emoji="${CSS.escape(focused.emoji)}"]` : `[data-action="${focused.action}"]`;
    (entry.el.querySelector(`.reactions ${selector}, .msg__tools ${selector}`) || entry.el.querySelector(".chip--add"))?.focus();
  }
}

// Optimistic: the chips change at once, and the request's answer is not applied on top, so a
// `reaction.updated` frame (every tab gets one for each change) always has the last word. A
// failed request puts the chips back, unless a frame has replaced them meanwhile.
async function toggleReaction(entry, emoji) {
  const id = entry.data.id;
  const before = entry.data.reactions || [];
  const existing = before.find((r) => r.emoji === emoji);
  const removing = !!(existing && existing.me);
  const next = removing
    ? before.map((r) => (r.emoji === emoji ? { ...r, count: r.count - 1, me: false } : r)).filter((r) => r.count > 0)
    : existing
      ? before.map((r) => (r.emoji === emoji ? { ...r, count: r.count + 1, me: true } : r))
      : [...before, { emoji, count: 1, me: true }];
  setReactions(id, next);
  try {
    if (removing) await api.unreact(id, emoji);
    else await api.react(id, emoji);
  } catch (err) {
    if (removing && err instanceof ApiError && err.status === 404) return; // already gone
    const now = state.messages.get(id);
    if (now && now.data.reactions === next) setReactions(id, before);
    showNotice(errorText(err));
  }
}

// Socket frames ----------------------------------------------------------------

function handleFrame(frame, generation) {
  if (generation !== state.generation || !frame || typeof frame.type !== "string") return;
  if (frame.type === "session.ready") {
    state.readySeen += 1;
    if (state.readySeen > 1 && state.queue === null) {
      // A reconnect (or resync): catch up with the history before applying live frames.
      state.queue = [frame];
      refreshTail(generation)
        .catch((err) => showNotice(errorText(err)))
        .finally(() => flushQueue(generation));
      return;
    }
  }
  if (state.queue !== null) {
    state.queue.push(frame);
    return;
  }
  applyFrame(frame);
}

function flushQueue(generation) {
  if (generation !== state.generation) return;
  const queue = state.queue || [];
  state.queue = null;
  for (const frame of queue) applyFrame(frame);
  updateEmpty();
  updateComposer();
}

function applyFrame(frame) {
  switch (frame.type) {
    case "session.ready": {
      if (frame.session) upsertSession(frame.session);
      const active = new Set();
      for (const item of frame.active || []) {
        active.add(item.message_id);
        const entry = state.messages.get(item.message_id);
        if (entry) {
          if (entry.data.status === "streaming" && item.offset > entry.length) {
            setText(entry, item.content || "");
            fillGap(entry);
            scheduleRender(entry);
          }
        } else {
          upsertMessage({ id: item.message_id, role: "assistant", type: "text", status: "streaming", content: item.content || "", reactions: [] });
        }
      }
      // A reply that is streaming here but not on the server finished meanwhile: the history
      // has its end. One the history does not know either (a placeholder made from a stray
      // delta, never given a seq) is not a reply of this chat and goes.
      const stale = runningReplies().filter((e) => !active.has(e.data.id));
      if (stale.length) {
        const generation = state.generation;
        refreshTail(generation)
          .then(() => {
            if (generation !== state.generation) return;
            for (const e of stale) if (e.data.status === "streaming" && !Number.isFinite(e.data.seq)) removeEntry(e);
          })
          .catch(() => {});
      }
      syncPending(frame.pending);
      resendOutstanding();
      for (const resolve of state.readyWaiters.splice(0)) resolve(true);
      for (const record of state.pending.values()) if (record.retry && !record.resolved) answerToolCall(record);
      break;
    }
    case "message.created":
    case "message.completed":
      if (frame.message) upsertMessage(frame.message);
      if (frame.session_usage && state.current) upsertSession({ ...state.current, usage: frame.session_usage });
      if (frame.message && state.current && frame.message.role === "user") {
        upsertSession({ ...state.current, updated_at: frame.message.created_at || new Date().toISOString() });
      }
      break;
    case "message.delta":
      applyDelta(frame);
      break;
    case "reaction.updated":
      setReactions(frame.message_id, frame.reactions || []);
      break;
    case "tool.call":
    case "approval.requested":
    case "plan.proposed":
      addPending({ ...frame, kind: KIND_OF_FRAME[frame.type] });
      break;
    case "agent.switched":
      if (frame.session) {
        upsertSession(frame.session);
        addNote(`Now talking to ${agentName(frame.session.agent)}.`);
      }
      break;
    case "session.updated":
      if (frame.session) upsertSession(frame.session);
      break;
    case "session.deleted":
      sessionGone(frame.id, true);
      break;
    case "error":
      handleError(frame);
      break;
    default:
      break;
  }
}

function addNote(text) {
  const stick = isNearBottom();
  dom.messages.append(h("p", { class: "note", text }));
  if (stick) scrollToBottom();
}

const ERROR_TEXT = {
  busy: "A reply is still running. Wait for it to finish or press Stop.",
  rate_limited: "Too many requests; slow down a little.",
};

function handleError(frame) {
  const requestId = frame.request_id == null ? "" : String(frame.request_id);
  const decidedElsewhere = frame.code === "not_found" || frame.code === "already_decided";
  if (requestId.startsWith("tool:") && decidedElsewhere) return; // another tab answered first
  if (requestId.startsWith("decide:")) {
    const record = state.pending.get(requestId.slice(7));
    if (record) {
      if (decidedElsewhere) {
        resolvePending(record.key, "closed", "Already decided elsewhere.");
        return;
      }
      record.resolved = false;
      markPending(record, null, frame.detail);
    }
  }
  const send = state.sends.get(requestId);
  if (send) {
    dropSend(requestId);
    if (!dom.input.value) dom.input.value = send.content;
    autosize();
  }
  if (requestId === "switch_agent") renderHeader();
  showNotice(ERROR_TEXT[frame.code] || frame.detail || `Error: ${frame.code}`);
}

// Sessions: selecting one --------------------------------------------------------

function clearSession() {
  state.generation += 1;
  clearTimeout(state.gapTimer);
  state.gapTimer = null;
  if (state.socket) state.socket.close();
  state.socket = null;
  state.current = null;
  state.messages.clear();
  state.sends.clear();
  state.pending.clear();
  state.queue = null;
  state.readySeen = 0;
  state.olderUrl = null;
  state.loadingOlder = false;
  closePicker();
  dom.messages.replaceChildren();
  dom.older.hidden = true;
  setConnState("offline");
  history.replaceState(null, "", location.pathname);
  renderHeader();
  renderSessionList();
  updateEmpty();
  updateComposer();
}

async function selectSession(id) {
  clearSession();
  const generation = state.generation;
  let session = state.sessions.get(id);
  if (!session) {
    try {
      session = await api.getSession(id);
    } catch (err) {
      if (generation === state.generation) showNotice(errorText(err));
      return;
    }
    if (generation !== state.generation) return;
    state.sessions.set(id, session);
  }
  state.current = session;
  history.replaceState(null, "", `${location.pathname}?s=${encodeURIComponent(id)}`);
  renderHeader();
  renderSessionList();
  state.queue = [];
  updateEmpty();
  updateComposer();
  dom.messages.setAttribute("aria-busy", "true");
  state.socket = new ChatSocket(id, {
    onFrame: (frame) => handleFrame(frame, generation),
    onState: (connState) => generation === state.generation && setConnState(connState),
    onFatal: (code) => {
      if (generation !== state.generation) return;
      if (code === 4401) location.assign(`/accounts/login/?next=${encodeURIComponent(location.pathname + location.search)}`);
      else sessionGone(id, true);
    },
  });
  try {
    await loadHistory(generation, id);
  } catch (err) {
    if (generation === state.generation) showNotice(errorText(err));
  }
  if (generation !== state.generation) return;
  dom.messages.removeAttribute("aria-busy");
  flushQueue(generation);
  scrollToBottom();
  maybeLoadOlder();
}

// A message found by search: open its chat, then read older pages until it is there (a progress
// note while that takes), scroll to it and mark it for a moment.
async function openMessage(sessionId, messageId) {
  if (!state.current || state.current.id !== sessionId || !state.messages.has(messageId)) await selectSession(sessionId);
  const generation = state.generation;
  let pages = 0;
  while (!state.messages.has(messageId) && state.olderUrl && generation === state.generation) {
    if (state.loadingOlder) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      continue;
    }
    pages += 1;
    if (pages > 1) showNotice(`Finding the message… (${pages} pages of history read)`);
    await loadOlder();
  }
  if (generation !== state.generation) return;
  const entry = state.messages.get(messageId);
  if (!entry || !entry.el) {
    showNotice("That message is no longer in this chat.");
    return;
  }
  if (pages > 1) dom.notice.hidden = true;
  history.replaceState(null, "", `${location.pathname}?s=${encodeURIComponent(sessionId)}&m=${encodeURIComponent(messageId)}`);
  entry.el.scrollIntoView({ block: "center" });
  entry.el.classList.remove("msg--found");
  void entry.el.offsetWidth; // restart the animation when the same message is opened again
  entry.el.classList.add("msg--found");
  setSidebar(false);
}

function waitForReady(timeout) {
  if (state.socket && state.socket.isOpen && state.readySeen > 0 && state.queue === null) return Promise.resolve(true);
  return new Promise((resolve) => {
    state.readyWaiters.push(resolve);
    setTimeout(() => resolve(false), timeout);
  });
}

// Composer ---------------------------------------------------------------------

function autosize() {
  dom.input.style.height = "auto";
  dom.input.style.height = `${Math.min(dom.input.scrollHeight, 220)}px`;
}

dom.input.addEventListener("input", () => {
  autosize();
  dom.send.disabled = dom.input.disabled || !dom.input.value.trim();
});

dom.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    dom.composer.requestSubmit();
  }
});

dom.composer.addEventListener("submit", async (event) => {
  event.preventDefault();
  const content = dom.input.value;
  if (!content.trim() || dom.input.disabled) return;
  if (!state.current) {
    try {
      const session = await api.createSession({});
      upsertSession(session);
      await selectSession(session.id);
    } catch (err) {
      showNotice(errorText(err));
      return;
    }
  }
  sendMessage(content);
});

async function sendMessage(content) {
  const session = state.current;
  const generation = state.generation;
  const clientId = uuid4();
  const bubble = h(
    "article",
    { class: "msg msg--user msg--sending", dataset: { seq: Infinity, status: "sending", clientId }, "aria-label": "You (sending)" },
    h("div", { class: "msg__avatar", "aria-hidden": "true" }, "You"),
    h("div", { class: "msg__main" }, h("header", { class: "msg__meta" }, h("span", { class: "msg__author", text: "You" }), h("span", { class: "msg__time", text: "Sending…" })), h("div", { class: "msg__body", text: content })),
  );
  // sent: went out over the socket (re-sent after every session.ready until its
  // message.created comes); rest: went out over REST instead (never re-sent on the socket).
  const send = { el: bubble, content, sent: false, rest: false };
  state.sends.set(clientId, send);
  dom.messages.append(bubble);
  scrollToBottom();
  dom.input.value = "";
  autosize();
  state.hadFocus = true;
  updateComposer();
  updateEmpty();
  const isFirst = !session.title && state.messages.size === 0;
  const ready = await waitForReady(5000);
  if (generation !== state.generation || state.sends.get(clientId) !== send) return;
  if (ready && state.socket.send(userMessageFrame(clientId, send))) {
    send.sent = true;
  } else {
    // No socket: the same turn over REST; the socket catches up with the reply when it is back.
    // The answer carries no client_id, so the bubble is replaced here, not by message.created.
    send.rest = true;
    try {
      const message = await api.postMessage(session.id, content, clientId);
      if (generation !== state.generation) return;
      dropSend(clientId, false);
      upsertMessage(message);
    } catch (err) {
      if (generation === state.generation) handleError({ type: "error", code: err.code, detail: errorText(err), request_id: clientId });
      return;
    }
  }
  if (isFirst) {
    const title = content.trim().split("\n")[0].slice(0, 60);
    api.updateSession(session.id, { title }).then(upsertSession).catch(() => {});
  }
}

function userMessageFrame(clientId, send) {
  return { type: "user_message", content: send.content, client_id: clientId, request_id: clientId };
}

// The bubble of a send goes when the server has its message (or refused it).
function dropSend(clientId, refresh = true) {
  const send = state.sends.get(clientId);
  if (!send) return;
  send.el.remove();
  state.sends.delete(clientId);
  if (refresh) {
    updateComposer();
    updateEmpty();
  }
}

// A frame sent just before the connection died may never have reached the server. After every
// session.ready (the history has caught up by then, so what arrived is known), what is still
// outstanding goes again with the same client_id: the server makes a repeat idempotent and
// answers it with the existing messages' message.created.
function resendOutstanding() {
  if (!state.socket) return;
  for (const [clientId, send] of state.sends) {
    if (send.sent && !send.rest) state.socket.send(userMessageFrame(clientId, send));
  }
}

dom.stop.addEventListener("click", () => {
  if (!state.socket || !state.socket.send({ type: "cancel", request_id: "cancel" })) {
    showNotice("Not connected: the reply could not be stopped.");
  }
});

// Keyboard -----------------------------------------------------------------------

document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  if (picker) {
    closePicker(true);
  } else if (dom.app.dataset.sidebar === "open") {
    setSidebar(false);
    dom.toggleSidebar.focus();
  }
});

// Start ------------------------------------------------------------------------

async function start() {
  setConnState("offline");
  updateComposer();
  try {
    const [agents] = await Promise.all([api.agents(), loadSessions()]);
    state.agents = Array.isArray(agents) ? agents : agents.results || [];
    state.agentsBySlug = new Map(state.agents.map((a) => [a.slug, a]));
  } catch (err) {
    showNotice(errorText(err));
  }
  const params = new URLSearchParams(location.search);
  const wanted = params.get("s");
  const first = sortedSessions()[0];
  if (wanted && params.get("m")) await openMessage(wanted, params.get("m"));
  else if (wanted) await selectSession(wanted);
  else if (first) await selectSession(first.id);
  else {
    renderHeader();
    updateEmpty();
  }
  if (!dom.input.disabled) dom.input.focus();
}

initSearch({ onOpen: openMessage, errorText });
start();
