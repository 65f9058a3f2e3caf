// What every part of the page shares: the constants, the `dom` lookup of the page's fixed
// elements, small helpers (`h` to build elements, `codePoints`, `uuid4`, the time formats,
// `pretty`), the `state` of the session list and the open chat, the notice bar and `errorText`,
// the connection indicator, scrolling the conversation and its empty state, and `hooks`: the few
// callbacks through which a module calls up to one above it (see the end of this file).

import { ApiError } from "./api.js";

export const EMOJIS = ["👍", "👎", "❤️", "😂", "🎉", "😮"];
export const PAGE_SIZE = 100;
export const STATUS_LABELS = { cancelled: "Stopped", failed: "Failed", interrupted: "Interrupted" };
export const CARD_TYPES = new Set(["tool_call", "tool_result", "approval", "plan", "event"]);

const $ = (id) => document.getElementById(id);
export const dom = {
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
  onBusy: $("busy-select"),
  conn: $("conn"),
  notice: $("notice"),
  conversation: $("conversation"),
  messages: $("messages"),
  older: $("older"),
  loadOlder: $("load-older"),
  empty: $("empty-state"),
  queue: $("queue"),
  queueList: $("queue-list"),
  composer: $("composer"),
  input: $("composer-input"),
  send: $("send-button"),
  stop: $("stop-button"),
};

export function h(tag, attrs = {}, ...children) {
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
export const codePoints = (text) => {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
};

export function uuid4() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, "0")).join("");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

export const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
export const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
export function shortWhen(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const now = new Date();
  if (date.toDateString() === now.toDateString()) return timeFormat.format(date);
  return new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" }).format(date);
}

export function pretty(value) {
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

// State ------------------------------------------------------------------------

export const state = {
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
  queue: null, // frames held while history loads (or the branch is read again)
  reading: null, // the promise of a branch being read again (frames.js followBranch), or null
  branchEpoch: 0, // counts those reads: an older page read across one belongs to the branch before
  anchor: null, // {id, top}: where the version chosen here is to appear once its branch is read
  queued: [], // the session's queued messages (QueuedMessage), in the order they will be answered
  acting: false, // a regenerate or a switch of versions is under way
  actionsBusy: false, // the message actions (edit, regenerate, versions) are disabled
  readySeen: 0,
  readyWaiters: [],
  gapTimer: null,
  loadingOlder: false,
  hadFocus: false,
  renaming: null, // {id, li, cancel}: the list item whose title is being edited
};

export function sessionTitle(session) {
  return (session && session.title) || "New chat";
}

export function agentName(slug) {
  const agent = slug && state.agentsBySlug.get(slug);
  return agent ? agent.name : slug || "Assistant";
}

// Notices ----------------------------------------------------------------------

let noticeTimer = null;
export function showNotice(text, kind = "error") {
  dom.notice.querySelector(".notice__text").textContent = text;
  dom.notice.dataset.kind = kind;
  dom.notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (dom.notice.hidden = true), 8000);
}
dom.notice.querySelector(".notice__close").addEventListener("click", () => (dom.notice.hidden = true));

export function errorText(err) {
  if (err instanceof ApiError) return err.message;
  return (err && err.message) || "Something went wrong.";
}

// Connection indicator ---------------------------------------------------------

const CONN_LABELS = { connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…", offline: "Offline" };
export function setConnState(connState) {
  dom.conn.dataset.state = connState;
  dom.conn.querySelector(".conn__label").textContent = CONN_LABELS[connState] || connState;
  dom.conn.title = connState === "reconnecting" ? "The connection dropped; retrying automatically." : CONN_LABELS[connState];
}

// Conversation: scrolling and the empty state ----------------------------------

export function isNearBottom() {
  const c = dom.conversation;
  return c.scrollHeight - c.scrollTop - c.clientHeight < 80;
}

export function scrollToBottom() {
  dom.conversation.scrollTop = dom.conversation.scrollHeight;
}

export function updateEmpty() {
  dom.empty.hidden = state.messages.size > 0 || state.sends.size > 0 || state.pending.size > 0 || state.queued.length > 0 || state.queue !== null;
}

// Hooks ------------------------------------------------------------------------

// The page's modules import each other without cycles (app.js at the top, this module at the
// bottom), so the few calls that go up the graph go through these callbacks. app.js fills them
// all at start-up, before any event can call one.
//   renderHeader()      header.js; called by sidebar.js when the open chat's session changes
//   selectSession(id)   app.js; called by sidebar.js (open, delete, new chat) and composer.js
//   clearSession()      app.js; called by sidebar.js when the last chat is deleted
//   handleError(frame)  frames.js; called by composer.js when a send over REST fails
//   followBranch(generation, leaf)  frames.js; called by composer.js and versions.js when a
//                       request over REST changed the active branch (see frames.js)
export const hooks = {};
