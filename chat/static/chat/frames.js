// Socket frames: what arrives on the session socket, held in a queue while the history loads
// or catches up after a reconnect, then applied to the messages, the pending cards, the
// reactions and the session list; `error` frames go back to the request they answer.

import { agentName, dom, errorText, h, isNearBottom, scrollToBottom, showNotice, state, updateEmpty } from "./state.js";
import { setReactions } from "./reactions.js";
import { addPending, answerToolCall, KIND_OF_FRAME, markPending, resolvePending, syncPending } from "./cards.js";
import { applyDelta, dropSend, fillGap, removeEntry, runningReplies, scheduleRender, setText, updateComposer, upsertMessage } from "./messages.js";
import { refreshTail } from "./history.js";
import { sessionGone, upsertSession } from "./sidebar.js";
import { renderHeader } from "./header.js";
import { autosize, resendOutstanding } from "./composer.js";

// Socket frames ----------------------------------------------------------------

export function handleFrame(frame, generation) {
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

export function flushQueue(generation) {
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
    if (!dom.input.value) dom.input.value = send.content;
    autosize();
  }
  if (requestId === "switch_agent") renderHeader();
  showNotice(ERROR_TEXT[frame.code] || frame.detail || `Error: ${frame.code}`);
}
