// The session's queue: messages sent while a turn runs, with the session's (or the message's)
// `on_busy` set to "enqueue" or "interrupt", wait on the server and are answered one by one
// when the turn ends. They are shown after the conversation, in the order they will be answered,
// each with Cancel. `queue.updated` (every tab gets one after each change) and
// `session.ready.queue` are the whole truth; a queued message leaves the list when it is answered
// (it comes back as an ordinary message, `message.created`) or cancelled. A send of this page
// whose `client_id` is in the queue is no longer "sending": its bubble gives way to the entry.

import { api, ApiError } from "./api.js";
import { dom, errorText, h, showNotice, state, updateEmpty } from "./state.js";
import { dropSend, updateComposer } from "./messages.js";

// Queue --------------------------------------------------------------------------

export function setQueue(items) {
  state.queued = Array.isArray(items) ? items : [];
  for (const item of state.queued) if (item.client_id) dropSend(item.client_id, false);
  renderQueue();
  updateComposer();
  updateEmpty();
}

// A send over REST answered 202: its message waits in the queue. `queue.updated` has the last word.
export function addQueued(item) {
  if (!item || state.queued.some((q) => q.id === item.id)) return;
  setQueue(item.interrupt ? [item, ...state.queued] : [...state.queued, item]);
}

function renderQueue() {
  // Focus on a Cancel button stays on the same entry when the list is built again.
  const focused = dom.queueList.contains(document.activeElement) ? document.activeElement.closest("li")?.dataset.id : null;
  const items = state.queued.map((item, index) => {
    const label = item.interrupt ? "Next" : `Queued · ${index + 1}`;
    const preview = item.content.length > 40 ? `${item.content.slice(0, 40)}…` : item.content;
    return h(
      "li",
      { class: "queued", dataset: { id: item.id } },
      h(
        "div",
        { class: "queued__main" },
        h("p", { class: "queued__meta" }, h("span", { class: "badge badge--queued", text: label })),
        h("div", { class: "queued__body", text: item.content }),
      ),
      h("button", { type: "button", class: "btn btn--small queued__cancel", dataset: { action: "cancel-queued" }, "aria-label": `Cancel the queued message “${preview}”`, title: "Cancel: this message will not be sent" }, "Cancel"),
    );
  });
  dom.queueList.replaceChildren(...items);
  dom.queue.hidden = !items.length;
  if (focused) dom.queueList.querySelector(`li[data-id="${CSS.escape(focused)}"] button`)?.focus();
}

dom.queueList.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action=cancel-queued]");
  const id = button && button.closest("li").dataset.id;
  if (!id || !state.current) return;
  const generation = state.generation;
  button.disabled = true;
  try {
    await api.cancelQueued(state.current.id, id);
  } catch (err) {
    if (generation !== state.generation) return;
    if (err instanceof ApiError && err.status === 404) {
      showNotice("That message was answered already.", "info");
    } else {
      button.disabled = false;
      showNotice(errorText(err));
      return;
    }
  }
  // Gone on the server: gone here too, without waiting for `queue.updated` (the socket may be away).
  if (generation === state.generation) setQueue(state.queued.filter((q) => q.id !== id));
});
