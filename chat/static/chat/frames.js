// Socket frames: what arrives on the session socket, held in a queue while the history loads,
// catches up after a reconnect or follows a change of the active branch, then applied to the
// messages, the pending cards, the reactions, the queued messages and the session list; `error`
// frames go back to the request they answer.

import { agentName, dom, errorText, h, isNearBottom, scrollToBottom, showNotice, state, updateEmpty } from "./state.js";
import { setReactions } from "./reactions.js";
import { addPending, answerToolCall, KIND_OF_FRAME, markPending, resolvePending, syncPending } from "./cards.js";
import { applyDelta, dropSend, fillGap, runningReplies, scheduleRender, setText, updateComposer, upsertMessage } from "./messages.js";
import { setQueue } from "./queue.js";
import { maybeLoadOlder, readBranch } from "./history.js";
import { sessionGone, upsertSession } from "./sidebar.js";
import { renderHeader } from "./header.js";
import { autosize, resendOutstanding } from "./composer.js";
import { reopenEdit } from "./versions.js";

// Socket frames ----------------------------------------------------------------

export function handleFrame(frame, generation) {
  if (generation !== state.generation || !frame || typeof frame.type !== "string") return;
  if (frame.type === "session.ready") {
    state.readySeen += 1;
    if (state.readySeen > 1 && state.queue === null) {
      // A reconnect (or resync): catch up with the branch (it may have changed meanwhile) before
      // applying live frames.
      state.queue = [frame];
      followBranch(generation);
      return;
    }
  }
  if (state.queue !== null) {
    state.queue.push(frame);
    return;
  }
  applyFrame(frame);
}

export function flushQueue(generation) {
  if (generation !== state.generation) return;
  const queue = state.queue || [];
  state.queue = null;
  for (let i = 0; i < queue.length; i += 1) {
    applyFrame(queue[i]);
    if (state.queue !== null) {
      // That frame started another read of the branch: the rest wait for it, in order.
      state.queue.push(...queue.slice(i + 1));
      return;
    }
  }
  // Sends waiting for the socket to be usable go now (after a reconnect `session.ready` did it).
  if (state.socket && state.socket.isOpen && state.readySeen > 0) for (const resolve of state.readyWaiters.splice(0)) resolve(true);
  updateEmpty();
  updateComposer();
}

// The active branch changed (a version chosen, an edit, a regenerated reply: here or in another
// tab) or may have (a reconnect): read it again (history.js `readBranch`) while live frames are
// held, then apply them in order, so nothing streams into a message that is going and nothing is
// lost. `leaf`: the branch's last message, when known; if it is shown already, nothing is read.
// Reads follow one another; the last one applies the frames held. The place on screen is kept:
// the version just chosen where its predecessor was, else the bottom if the view was there, else
// the first message in view.
export function followBranch(generation, leaf = null) {
  if (generation !== state.generation) return Promise.resolve();
  // An answer over REST may come while a frame's read runs: once it is done, the leaf may be shown.
  // (A frame is held while a read runs, so it never gets here then.)
  if (leaf && state.reading) return state.reading.then(() => followBranch(generation, leaf));
  if (leaf && state.messages.has(leaf)) return Promise.resolve();
  if (state.queue === null) state.queue = [];
  const view = viewAnchor();
  const read = (state.reading || Promise.resolve())
    .then(() => (generation === state.generation ? readBranch(generation) : null))
    .then(() => generation === state.generation && restoreView(view))
    .catch((err) => generation === state.generation && showNotice(errorText(err)))
    .then(() => {
      if (generation !== state.generation || state.reading !== read) return;
      state.reading = null;
      flushQueue(generation);
      maybeLoadOlder();
    });
  state.reading = read;
  updateEmpty();
  return read;
}

function viewAnchor() {
  const chosen = state.anchor;
  state.anchor = null;
  if (chosen) return chosen;
  if (isNearBottom()) return { bottom: true };
  const top = dom.conversation.getBoundingClientRect().top;
  for (const el of dom.messages.querySelectorAll("article.msg[data-id]")) {
    const box = el.getBoundingClientRect();
    if (box.bottom > top) return { id: el.dataset.id, top: box.top };
  }
  return { bottom: true };
}

function restoreView(view) {
  const entry = view.id && state.messages.get(view.id);
  if (entry && entry.el.isConnected) dom.conversation.scrollTop += entry.el.getBoundingClientRect().top - view.top;
  else if (view.bottom) scrollToBottom();
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
      // delta, never given a seq) is not a reply of this chat and goes (readBranch).
      const stale = runningReplies().filter((e) => !active.has(e.data.id));
      if (stale.length) followBranch(state.generation);
      syncPending(frame.pending);
      // Before the re-sends: a send already in the queue is not "sending" any more.
      setQueue(frame.queue || []);
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
    case "branch.switched":
      followBranch(state.generation, frame.leaf);
      break;
    case "queue.updated":
      setQueue(frame.queue);
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
  busy: "A reply is still running. Wait for it to finish, press Stop, or choose Queue or Interrupt under “While replying”.",
  rate_limited: "Too many requests; slow down a little.",
};

export function handleError(frame) {
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
  if (send && frame.code === "unavailable" && send.sent && !send.rest && state.socket) {
    // This server process is restarting and saved nothing. The message stays outstanding: it goes
    // again, with its client_id, after the next session.ready, on a connection made at once (the
    // balancer sends it to a process that takes it).
    state.socket.dropDeadLink();
    return;
  }
  if (send) {
    dropSend(requestId);
    if (send.editOf) reopenEdit(send);
    else if (!dom.input.value) dom.input.value = send.content;
    autosize();
  }
  if (requestId === "switch_agent") renderHeader();
  // `busy` with nothing running here: messages wait in the queue (the server says so).
  const known = frame.code === "busy" && !runningReplies().length ? null : ERROR_TEXT[frame.code];
  showNotice(known || frame.detail || `Error: ${frame.code}`);
}
