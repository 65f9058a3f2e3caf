// The sidebar: the user's chats (kept in `state.sessions`, newest first) and their list:
// opening, renaming and deleting one, older chats, a new chat, and the sidebar's open/closed
// state on narrow screens. It calls up through `hooks`: to re-render the header when the open
// chat's session changes, and to select or clear the open chat (app.js).

import { api, ApiError, relativeUrl } from "./api.js";
import { dom, errorText, h, hooks, sessionTitle, shortWhen, showNotice, state } from "./state.js";

// Sidebar ----------------------------------------------------------------------

export function setSidebar(open) {
  dom.app.dataset.sidebar = open ? "open" : "closed";
  dom.toggleSidebar.setAttribute("aria-expanded", String(open));
  dom.scrim.hidden = !open;
  if (open) dom.sidebar.querySelector("button, [href]")?.focus();
}
dom.toggleSidebar.addEventListener("click", () => setSidebar(dom.app.dataset.sidebar !== "open"));
dom.scrim.addEventListener("click", () => setSidebar(false));

export function sortedSessions() {
  return [...state.sessions.values()].sort((a, b) => (a.updated_at < b.updated_at ? 1 : a.updated_at > b.updated_at ? -1 : 0));
}

export function renderSessionList() {
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

export function upsertSession(session) {
  state.sessions.set(session.id, { ...(state.sessions.get(session.id) || {}), ...session });
  if (state.current && state.current.id === session.id) {
    state.current = state.sessions.get(session.id);
    hooks.renderHeader();
  }
  renderSessionList();
}

function removeSession(id) {
  state.sessions.delete(id);
  renderSessionList();
}

export async function loadSessions(url) {
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
    if (!state.current || state.current.id !== id) hooks.selectSession(id);
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

export function sessionGone(id, notify) {
  removeSession(id);
  if (state.current && state.current.id === id) {
    if (notify) showNotice("This chat was deleted.", "info");
    const next = sortedSessions()[0];
    if (next) hooks.selectSession(next.id);
    else hooks.clearSession();
  }
}

dom.newSession.addEventListener("click", async () => {
  try {
    const session = await api.createSession({});
    upsertSession(session);
    await hooks.selectSession(session.id);
    setSidebar(false);
    dom.input.focus();
  } catch (err) {
    showNotice(errorText(err));
  }
});
