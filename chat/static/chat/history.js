// History: the open chat's messages read over REST: the newest page when it opens, the branch
// again after each reconnect and each change of the active branch, and older pages when the
// conversation is scrolled to its top or "Load earlier messages" is pressed. The server gives
// the active branch only (the messages from the first to the branch's last, along the versions
// chosen), so what the page shows is always one branch.

import { api, relativeUrl } from "./api.js";
import { dom, errorText, PAGE_SIZE, showNotice, state } from "./state.js";
import { closePicker, picker } from "./reactions.js";
import { dropDetachedPending } from "./cards.js";
import { removeEntry, upsertMessage } from "./messages.js";

// History ----------------------------------------------------------------------

// Opening a chat reads one page: the newest. Older pages follow `previous` when scrolling up.
export async function loadHistory(generation, sessionId) {
  const page = await api.messages(api.latestMessagesUrl(sessionId, PAGE_SIZE));
  if (generation !== state.generation) return;
  state.olderUrl = relativeUrl(page.previous);
  for (const message of page.results) upsertMessage(message);
  dom.older.hidden = !state.olderUrl;
}

// Pages read back from the newest before the page starts over (shows the newest and reads older
// ones on scroll) instead of joining them to what it has.
const MAX_BRANCH_PAGES = 10;

// The active branch again, after a reconnect (whatever was created or finished while away) or a
// change of branch (a version chosen, an edit, a regenerated reply, here or in another tab).
// Reads from the newest page back until a page holds a message the page already shows, or there
// is no older page. Along a branch `seq` only grows and the branch to a message is the one path
// to it, so once a read page meets a shown message M, every shown message older than the pages
// is on the new branch as well (it is on the path to M), and every shown message from the
// oldest page on is on it exactly when the pages have it. The others (an earlier version and
// what followed it; a placeholder the server never had) go. Without such a meeting the page
// keeps only what it read, with the older pages before it to read on scroll.
export async function readBranch(generation) {
  if (!state.current) return;
  let url = api.latestMessagesUrl(state.current.id, PAGE_SIZE);
  const pages = [];
  let joined = false;
  for (;;) {
    const page = await api.messages(url);
    if (generation !== state.generation) return;
    pages.push(page);
    const results = page.results || [];
    joined = results.some((m) => Number.isFinite(state.messages.get(m.id)?.data.seq));
    if (joined || !page.previous || pages.length >= MAX_BRANCH_PAGES) break;
    url = relativeUrl(page.previous);
  }
  state.branchEpoch += 1; // an older page asked for before this belongs to the branch before
  const read = pages.reverse().flatMap((page) => page.results || []);
  const ids = new Set(read.map((m) => m.id));
  const first = read.length ? read[0].seq : Infinity;
  for (const entry of [...state.messages.values()]) {
    if (ids.has(entry.data.id)) continue;
    if (joined && Number.isFinite(entry.data.seq) && entry.data.seq < first) continue;
    removeEntry(entry);
  }
  for (const message of read) upsertMessage(message);
  if (!joined) state.olderUrl = relativeUrl(pages[0].previous);
  dom.older.hidden = !state.olderUrl;
  if (picker && !picker.el.isConnected) closePicker();
  dropDetachedPending();
}

export async function loadOlder() {
  if (!state.olderUrl || state.loadingOlder || state.reading) return;
  state.loadingOlder = true;
  const generation = state.generation;
  const epoch = state.branchEpoch;
  const c = dom.conversation;
  let loaded = false;
  try {
    const page = await api.messages(state.olderUrl);
    if (generation !== state.generation || epoch !== state.branchEpoch) return;
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
