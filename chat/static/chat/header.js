// The header: the open chat's title, its token usage, and the mode, agent and "while replying"
// selects, which change the session (the agent over the socket while it is open, else over
// REST; the session's `on_busy` with a PATCH, which every tab hears as `session.updated`).

import { api } from "./api.js";
import { dom, errorText, h, sessionTitle, showNotice, state } from "./state.js";
import { updateComposer } from "./messages.js";
import { upsertSession } from "./sidebar.js";

// Header: title, mode and agent ------------------------------------------------

function renderAgents() {
  const current = state.current;
  const options = [];
  if (current && current.mode !== "direct") {
    options.push(h("option", { value: "", text: "Automatic" }));
  }
  for (const agent of state.agents) {
    options.push(h("option", { value: agent.slug, text: agent.name, title: agent.description }));
  }
  dom.agent.replaceChildren(...options);
  dom.agent.value = current && current.mode === "direct" ? current.agent || "" : "";
  dom.agent.disabled = !current || current.mode !== "direct";
  dom.agent.title = dom.agent.disabled ? "The orchestrator picks an agent for each message" : "The agent that answers";
}

export function renderHeader() {
  const current = state.current;
  dom.title.textContent = current ? sessionTitle(current) : "Chat";
  document.title = current ? `${sessionTitle(current)} · Chat` : "Chat";
  dom.controls.hidden = !current;
  if (current) dom.mode.value = current.mode || "orchestrated";
  if (current) dom.onBusy.value = current.on_busy || "reject";
  renderUsage(current);
  renderAgents();
  updateComposer(); // the composer's use while a reply runs follows `on_busy`
}

// The chat's tokens, as its replies' providers reported them (the session's `usage`, kept
// up to date by `message.completed`'s `session_usage`).
function renderUsage(current) {
  const usage = current && current.usage;
  const total = usage ? usage.total_tokens : 0;
  dom.usage.hidden = !total;
  if (!total) return;
  const number = (n) => n.toLocaleString("en-US");
  dom.usage.textContent = `${number(total)} token${total === 1 ? "" : "s"}`;
  dom.usage.title = `This chat so far: ${number(usage.prompt_tokens)} prompt + ${number(usage.completion_tokens)} completion tokens`;
}

function firstDirectAgent() {
  const agent = state.agents.find((a) => a.slug !== "orchestrator") || state.agents[0];
  return agent ? agent.slug : null;
}

dom.mode.addEventListener("change", async () => {
  const current = state.current;
  if (!current) return;
  const mode = dom.mode.value;
  const body = mode === "direct" ? { mode, agent: current.agent || firstDirectAgent() } : { mode };
  try {
    upsertSession(await api.updateSession(current.id, body));
  } catch (err) {
    showNotice(errorText(err));
    renderHeader();
  }
});

dom.agent.addEventListener("change", async () => {
  const current = state.current;
  const slug = dom.agent.value;
  if (!current || !slug) return;
  if (state.socket && state.socket.send({ type: "switch_agent", agent: slug, request_id: "switch_agent" })) return;
  try {
    upsertSession(await api.updateSession(current.id, { agent: slug }));
  } catch (err) {
    showNotice(errorText(err));
    renderHeader();
  }
});

dom.onBusy.addEventListener("change", async () => {
  const current = state.current;
  if (!current) return;
  try {
    upsertSession(await api.updateSession(current.id, { on_busy: dom.onBusy.value }));
  } catch (err) {
    showNotice(errorText(err));
    renderHeader();
  }
});
