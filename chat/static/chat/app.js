// The chat page: sessions, history, live streaming over the session socket, reactions,
// agents, and the cards of tool calls, approvals and plans.
//
// The server is the source of truth. Frames carry ids and offsets: deltas are applied by
// offset (repeats dropped, gaps left for the catch-up delta or `message.completed` to fill),
// and after every `session.ready` (each connect) and every `branch.switched` the active branch
// of the history is read again.
//
// This module selects a chat (its socket and its history), handles the page-wide keys and starts
// the page. The rest lives in modules that import each other without cycles, from the bottom up:
//   state.js      constants, the `dom` lookup, shared helpers, `state`, notices, `hooks`
//   reactions.js  reaction chips and the emoji picker
//   cards.js      pending tool calls, approvals and plans
//   messages.js   the message list: rendering, streaming deltas, the composer's state
//   queue.js      the messages waiting in the session's queue, and their Cancel
//   history.js    the history over REST: the newest page, older pages, the branch read again
//   sidebar.js    the list of chats
//   header.js     title, usage, mode, agent and what a message does while a reply runs
//   composer.js   the message box: sending and stopping
//   versions.js   versions of a message: the switcher, Regenerate, Edit
//   frames.js     the socket's frames, and following the active branch
// with api.js (REST), markdown.js, socket.js (the session socket), search.js and tools.js (the
// client tools) below them. A call that goes up the graph goes through `hooks` (state.js).

import { api } from "./api.js";
import { ChatSocket } from "./socket.js";
import { initSearch } from "./search.js";
import { dom, errorText, hooks, scrollToBottom, setConnState, showNotice, state, updateEmpty } from "./state.js";
import { closePicker, picker } from "./reactions.js";
import { updateComposer } from "./messages.js";
import { setQueue } from "./queue.js";
import { loadHistory, loadOlder, maybeLoadOlder } from "./history.js";
import { loadSessions, renderSessionList, sessionGone, setSidebar, sortedSessions, upsertSession } from "./sidebar.js";
import { renderHeader } from "./header.js";
import { flushQueue, followBranch, handleError, handleFrame } from "./frames.js";

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
  state.reading = null;
  state.anchor = null;
  state.acting = false;
  state.readySeen = 0;
  state.olderUrl = null;
  state.loadingOlder = false;
  closePicker();
  dom.messages.replaceChildren();
  setQueue([]);
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
// note while that takes), scroll to it and mark it for a moment. A message on another branch than
// the active one (an earlier version, or what followed one) is never on those pages: once the
// pages have gone past its `seq` (along a branch `seq` only grows), or there is none left, the
// chat switches to the branch through it (as choosing that version would) and looks again.
async function openMessage(sessionId, messageId, seq) {
  if (!state.current || state.current.id !== sessionId || !state.messages.has(messageId)) await selectSession(sessionId);
  const generation = state.generation;
  const progress = { pages: 0 };
  if ((await readUntil(messageId, seq, generation, progress)) === false) {
    try {
      const session = await api.switchBranch(sessionId, messageId);
      if (generation !== state.generation) return;
      upsertSession(session);
      await followBranch(generation, session.leaf);
    } catch (err) {
      if (generation === state.generation) showNotice(`That message is on another branch of this chat, which cannot be shown now: ${errorText(err)}`);
      return;
    }
    await readUntil(messageId, seq, generation, progress);
  }
  if (generation !== state.generation) return;
  const entry = state.messages.get(messageId);
  if (!entry || !entry.el) {
    showNotice("That message is no longer in this chat.");
    return;
  }
  if (progress.pages > 1) dom.notice.hidden = true;
  history.replaceState(null, "", `${location.pathname}?s=${encodeURIComponent(sessionId)}&m=${encodeURIComponent(messageId)}`);
  entry.el.scrollIntoView({ block: "center" });
  entry.el.classList.remove("msg--found");
  void entry.el.offsetWidth; // restart the animation when the same message is opened again
  entry.el.classList.add("msg--found");
  setSidebar(false);
}

// Older pages until the message is on the page (true), or it cannot be on this branch (false);
// null when a page could not be read (its error is shown) or another chat was opened.
async function readUntil(messageId, seq, generation, progress) {
  for (;;) {
    if (state.reading) await state.reading;
    if (generation !== state.generation) return null;
    if (state.messages.has(messageId)) return true;
    if ((Number.isFinite(seq) && oldestSeq() <= seq) || !state.olderUrl) return false;
    if (state.loadingOlder) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      continue;
    }
    progress.pages += 1;
    if (progress.pages > 1) showNotice(`Finding the message… (${progress.pages} pages of history read)`);
    const before = state.olderUrl;
    await loadOlder();
    if (state.olderUrl === before && !state.reading) return null; // no retry loop
  }
}

function oldestSeq() {
  let seq = Infinity;
  for (const entry of state.messages.values()) if (Number.isFinite(entry.data.seq) && entry.data.seq < seq) seq = entry.data.seq;
  return seq;
}

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

// The calls that go up the module graph (see `hooks` in state.js).
Object.assign(hooks, { renderHeader, selectSession, clearSession, handleError, followBranch });

initSearch({ onOpen: openMessage, errorText });
start();
