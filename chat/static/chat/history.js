// History: the open chat's messages read over REST: the newest page when it opens, the tail
// again after each reconnect, and older pages when the conversation is scrolled to its top or
// "Load earlier messages" is pressed.

import { api, relativeUrl } from "./api.js";
import { dom, errorText, PAGE_SIZE, showNotice, state } from "./state.js";
import { upsertMessage } from "./messages.js";

// History ----------------------------------------------------------------------

// Opening a chat reads one page: the newest. Older pages follow `previous` when scrolling up.
export async function loadHistory(generation, sessionId) {
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
export async function refreshTail(generation) {
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

export async function loadOlder() {
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
export function maybeLoadOlder() {
  if (dom.conversation.scrollTop < 150 && state.olderUrl && state.queue === null) loadOlder();
}
dom.loadOlder.addEventListener("click", loadOlder);
dom.conversation.addEventListener("scroll", maybeLoadOlder);
