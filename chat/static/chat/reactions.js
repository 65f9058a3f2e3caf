// Reactions: the chips under each finished text message (`renderReactions`), the emoji picker
// that adds one (at most one picker is open, `picker`; a click elsewhere closes it), and
// toggling a reaction: at once here, with the `reaction.updated` frame having the last word.

import { api, ApiError } from "./api.js";
import { EMOJIS, errorText, h, showNotice, state } from "./state.js";

// Reactions ----------------------------------------------------------------------

export let picker = null;
export function closePicker(focusBack = false) {
  if (!picker) return;
  const { el, opener } = picker;
  el.remove();
  opener.setAttribute("aria-expanded", "false");
  picker = null;
  if (focusBack && opener.isConnected) opener.focus();
}

export function openPicker(opener, entry) {
  const reopen = picker && picker.opener === opener;
  closePicker();
  if (reopen) return;
  const menu = h(
    "div",
    { class: "picker", role: "menu", "aria-label": "Choose a reaction" },
    EMOJIS.map((emoji) => h("button", { type: "button", class: "picker__item", role: "menuitem", dataset: { emoji }, "aria-label": `React with ${emoji}` }, emoji)),
  );
  menu.addEventListener("click", (event) => {
    const item = event.target.closest("[data-emoji]");
    if (!item) return;
    closePicker(true);
    const existing = (entry.data.reactions || []).find((r) => r.emoji === item.dataset.emoji);
    if (!existing || !existing.me) toggleReaction(entry, item.dataset.emoji);
  });
  menu.addEventListener("keydown", (event) => {
    const items = [...menu.querySelectorAll("button")];
    const index = items.indexOf(document.activeElement);
    if (event.key === "ArrowRight" || event.key === "ArrowDown") {
      event.preventDefault();
      items[(index + 1) % items.length].focus();
    } else if (event.key === "ArrowLeft" || event.key === "ArrowUp") {
      event.preventDefault();
      items[(index - 1 + items.length) % items.length].focus();
    } else if (event.key === "Escape") {
      event.preventDefault();
      closePicker(true);
    }
  });
  opener.after(menu);
  opener.setAttribute("aria-expanded", "true");
  picker = { el: menu, opener };
  menu.querySelector("button").focus();
}

document.addEventListener("click", (event) => {
  if (picker && !picker.el.contains(event.target) && event.target !== picker.opener && !picker.opener.contains(event.target)) closePicker();
});

export function renderReactions(entry) {
  const container = entry.el.querySelector(".reactions");
  const tools = entry.el.querySelector(".msg__tools");
  const data = entry.data;
  if (data.type !== "text" || data.status === "streaming" || !data.seq || data.seq === Infinity) {
    container.replaceChildren();
    container.hidden = true;
    if (!(picker && tools.contains(picker.el))) tools.replaceChildren();
    return;
  }
  container.hidden = !(data.reactions || []).length;
  const chips = (data.reactions || []).map((r) =>
    h(
      "button",
      {
        type: "button",
        class: `chip${r.me ? " chip--me" : ""}`,
        dataset: { action: "toggle-reaction", emoji: r.emoji },
        "aria-pressed": String(!!r.me),
        "aria-label": `${r.emoji} ${r.count} ${r.count === 1 ? "reaction" : "reactions"}${r.me ? ", including yours" : ""}`,
      },
      h("span", { class: "chip__emoji", "aria-hidden": "true", text: r.emoji }),
      h("span", { class: "chip__count", "aria-hidden": "true", text: String(r.count) }),
    ),
  );
  const add = h(
    "button",
    { type: "button", class: "chip chip--add", dataset: { action: "open-picker" }, "aria-label": "Add a reaction", "aria-haspopup": "true", "aria-expanded": "false", title: "Add a reaction" },
    h("span", { "aria-hidden": "true" }, "☺︎+"),
  );
  container.replaceChildren(...chips);
  // An open picker stays open while the reactions change under it.
  if (!(picker && tools.contains(picker.el))) tools.replaceChildren(add);
}

export function setReactions(messageId, reactions) {
  const entry = state.messages.get(messageId);
  if (!entry) return;
  entry.data.reactions = reactions;
  const focused = document.activeElement && entry.el.contains(document.activeElement) ? document.activeElement.dataset : null;
  renderReactions(entry);
  if (focused && focused.action) {
    const selector = focused.emoji ? `[data-emoji="${CSS.escape(focused.emoji)}"]` : `[data-action="${focused.action}"]`;
    (entry.el.querySelector(`.reactions ${selector}, .msg__tools ${selector}`) || entry.el.querySelector(".chip--add"))?.focus();
  }
}

// Optimistic: the chips change at once, and the request's answer is not applied on top, so a
// `reaction.updated` frame (every tab gets one for each change) always has the last word. A
// failed request puts the chips back, unless a frame has replaced them meanwhile.
export async function toggleReaction(entry, emoji) {
  const id = entry.data.id;
  const before = entry.data.reactions || [];
  const existing = before.find((r) => r.emoji === emoji);
  const removing = !!(existing && existing.me);
  const next = removing
    ? before.map((r) => (r.emoji === emoji ? { ...r, count: r.count - 1, me: false } : r)).filter((r) => r.count > 0)
    : existing
      ? before.map((r) => (r.emoji === emoji ? { ...r, count: r.count + 1, me: true } : r))
      : [...before, { emoji, count: 1, me: true }];
  setReactions(id, next);
  try {
    if (removing) await api.unreact(id, emoji);
    else await api.react(id, emoji);
  } catch (err) {
    if (removing && err instanceof ApiError && err.status === 404) return; // already gone
    const now = state.messages.get(id);
    if (now && now.data.reactions === next) setReactions(id, before);
    showNotice(errorText(err));
  }
}
