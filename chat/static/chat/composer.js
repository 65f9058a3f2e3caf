// The composer: the message box and its Send and Stop buttons. A message is shown at once as
// a "sending" bubble and goes over the socket once it is ready (again after each
// `session.ready` until the server has it), or over REST if it is not. It carries the session's
// `on_busy` (what it does if a reply runs: refused, queued, or it interrupts the reply). An
// edited message (versions.js) is sent the same way, with `edit_of`; its bubble stands in for the
// message it edits until the branch is read again.

import { api } from "./api.js";
import { dom, errorText, h, hooks, scrollToBottom, showNotice, state, updateEmpty, uuid4 } from "./state.js";
import { dropSend, updateComposer, upsertMessage } from "./messages.js";
import { addQueued } from "./queue.js";
import { upsertSession } from "./sidebar.js";

// Composer ---------------------------------------------------------------------

export function autosize() {
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
      await hooks.selectSession(session.id);
    } catch (err) {
      showNotice(errorText(err));
      return;
    }
  }
  sendMessage(content);
});

// `editOf`: the id of the user message this one is a new version of.
export async function sendMessage(content, { editOf = null } = {}) {
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
  // message.created comes); rest: went out over REST instead (never re-sent on the socket);
  // original: the element of the message an edit replaces (hidden while the bubble stands in).
  const original = editOf ? state.messages.get(editOf)?.el : null;
  const send = { el: bubble, content, sent: false, rest: false, editOf, onBusy: session.on_busy || null, original: null };
  state.sends.set(clientId, send);
  if (original && original.isConnected) {
    original.after(bubble);
    original.hidden = true;
    send.original = original;
  } else {
    dom.messages.append(bubble);
    scrollToBottom();
  }
  if (!editOf) {
    dom.input.value = "";
    autosize();
    state.hadFocus = true;
  }
  updateComposer();
  updateEmpty();
  const isFirst = !editOf && !session.title && state.messages.size === 0;
  const ready = await waitForReady(5000);
  if (generation !== state.generation || state.sends.get(clientId) !== send) return;
  if (ready && state.socket.send(userMessageFrame(clientId, send))) {
    send.sent = true;
  } else {
    // No socket: the same turn over REST; the socket catches up with the reply when it is back.
    // The answer carries no client_id, so the bubble is replaced here, not by message.created.
    send.rest = true;
    try {
      const answer = await api.postMessage(session.id, content, clientId, sendOptions(send));
      if (generation !== state.generation) return;
      dropSend(clientId, false);
      if (answer && answer.queued) addQueued(answer.queued);
      else if (editOf) await hooks.followBranch(generation, answer.id); // a new branch: read it
      else upsertMessage(answer);
      updateComposer();
    } catch (err) {
      if (generation === state.generation) hooks.handleError({ type: "error", code: err.code, detail: errorText(err), request_id: clientId });
      return;
    }
  }
  if (isFirst) {
    const title = content.trim().split("\n")[0].slice(0, 60);
    api.updateSession(session.id, { title }).then(upsertSession).catch(() => {});
  }
}

function sendOptions(send) {
  const options = {};
  if (send.onBusy) options.on_busy = send.onBusy;
  if (send.editOf) options.edit_of = send.editOf;
  return options;
}

function userMessageFrame(clientId, send) {
  return { type: "user_message", content: send.content, client_id: clientId, request_id: clientId, ...sendOptions(send) };
}

// A frame sent just before the connection died may never have reached the server. After every
// session.ready (the history has caught up by then, so what arrived is known), what is still
// outstanding goes again with the same client_id: the server makes a repeat idempotent and
// answers it with the existing messages' message.created.
export function resendOutstanding() {
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

function waitForReady(timeout) {
  if (state.socket && state.socket.isOpen && state.readySeen > 0 && state.queue === null) return Promise.resolve(true);
  return new Promise((resolve) => {
    state.readyWaiters.push(resolve);
    setTimeout(() => resolve(false), timeout);
  });
}
