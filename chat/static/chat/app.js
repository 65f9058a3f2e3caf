// The chat page: sessions, history, live streaming over the session socket, reactions,
// agents, and the cards of tool calls, approvals and plans.
//
// The server is the source of truth. Frames carry ids and offsets: deltas are applied by
// offset (repeats dropped, gaps left for the catch-up delta or `message.completed` to fill),
// and after every `session.ready` (each connect) the tail of the history is fetched again.
//
// This module selects a chat (its socket and its history), handles the page-wide keys and starts
// the page. The rest lives in modules that import each other without cycles, from the bottom up:
//   state.js      constants, the `dom` lookup, shared helpers, `state`, notices, `hooks`
//   reactions.js  reaction chips and the emoji picker
//   cards.js      pending tool calls, approvals and plans
//   messages.js   the message list: rendering, streaming deltas, the composer's state
//   history.js    the history over REST
//   sidebar.js    the list of chats
//   header.js     title, usage, mode and agent
//   composer.js   the message box: sending and stopping
//   frames.js     the socket's frames
// with api.js (REST), markdown.js, socket.js (the session socket), search.js and tools.js (the
// client tools) below them. A call that goes up the graph goes through `hooks` (state.js).

import { api } from "./api.js";
import { ChatSocket } from "./socket.js";
import { initSearch } from "./search.js";
import { dom, errorText, hooks, scrollToBottom, setConnState, showNotice, state, updateEmpty } from "./state.js";
import { closePicker, picker } from "./reactions.js";
import { updateComposer } from "./messages.js";
import { loadHistory, loadOlder, maybeLoadOlder } from "./history.js";
import { loadSessions, renderSessionList, sessionGone, setSidebar, sortedSessions } from "./sidebar.js";
import { renderHeader } from "./header.js";
import { flushQueue, handleError, handleFrame } from "./frames.js";

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
    const before = state.olderUrl;
    await loadOlder();
    if (state.olderUrl === before) return; // the page could not be read (its error is shown): no retry loop
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
Object.assign(hooks, { renderHeader, selectSession, clearSession, handleError });

initSearch({ onOpen: openMessage, errorText });
start();
