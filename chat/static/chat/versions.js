// Versions of a message: the switcher (`‹ 2 / 3 ›`) that shows another version, Regenerate on an
// assistant's text reply (another answer, a new version of it), and Edit on the user's own text
// messages (an editor in the bubble; Save sends a new version with `edit_of`). Each one moves the
// session's active branch; the server then sends `branch.switched` to every tab, and each reads
// the branch again (frames.js `followBranch`), so the others follow. The buttons themselves are
// built with the message (messages.js) and wait while a turn runs.

import { api } from "./api.js";
import { dom, errorText, h, hooks, showNotice, state } from "./state.js";
import { updateComposer } from "./messages.js";
import { upsertSession } from "./sidebar.js";
import { sendMessage } from "./composer.js";

// Versions and regenerating --------------------------------------------------------

dom.messages.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  const article = button && button.closest("article.msg");
  const entry = article && state.messages.get(article.dataset.id);
  if (!entry || button.disabled) return;
  const action = button.dataset.action;
  if (action === "version" && button.dataset.target) showVersion(entry, button.dataset.target);
  else if (action === "regenerate") regenerate(entry);
  else if (action === "edit") openEditor(entry);
});

// One request at a time; the actions wait meanwhile (`state.acting`, messages.js).
async function act(work) {
  if (state.acting || !state.current) return;
  state.acting = true;
  updateComposer();
  try {
    await work(state.current.id, state.generation);
  } catch (err) {
    state.anchor = null;
    showNotice(errorText(err));
  } finally {
    state.acting = false;
    updateComposer();
  }
}

// The version chosen takes the place of the one shown: the page keeps it where it was on screen,
// and the keyboard's focus moves to the same button of the version now shown.
async function showVersion(entry, target) {
  const label = document.activeElement && entry.el.contains(document.activeElement) ? document.activeElement.getAttribute("aria-label") : null;
  state.anchor = { id: target, top: entry.el.getBoundingClientRect().top };
  await act(async (sessionId, generation) => {
    const session = await api.switchBranch(sessionId, target);
    if (generation !== state.generation) return;
    upsertSession(session);
    await hooks.followBranch(generation, session.leaf);
  });
  const shown = state.messages.get(target);
  if (label && shown && shown.el.isConnected && !entry.el.isConnected) {
    const buttons = [...shown.el.querySelectorAll('button[data-action="version"]')];
    (buttons.find((b) => b.getAttribute("aria-label") === label && !b.disabled) || buttons.find((b) => !b.disabled))?.focus();
  }
}

function regenerate(entry) {
  return act(async (sessionId, generation) => {
    const reply = await api.regenerate(entry.data.id);
    if (generation !== state.generation) return;
    await hooks.followBranch(generation, reply.id);
  });
}

// Editing ------------------------------------------------------------------------

// The editor takes the place of the bubble's text: Enter (or Save) sends the new version,
// Shift+Enter adds a line, Escape (or Cancel) puts the message back as it was.
export function openEditor(entry, text = entry.text) {
  if (entry.editor || !entry.el.isConnected) return;
  const input = h("textarea", { class: "editor__input", rows: 2, "aria-label": "Edit your message", maxlength: 100000 });
  input.value = text;
  const cancel = h("button", { type: "button", class: "btn btn--small" }, "Cancel");
  const save = h("button", { type: "submit", class: "btn btn--primary btn--small", "aria-label": "Save and send the edited message" }, "Save");
  const form = h("form", { class: "editor", "aria-label": "Edit message" }, input, h("div", { class: "editor__actions" }, cancel, save));
  entry.editor = form;
  entry.el.classList.add("msg--editing");
  entry.el.querySelector(".msg__body").after(form);
  const fit = () => {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 320)}px`;
    save.disabled = !input.value.trim();
  };
  input.addEventListener("input", fit);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      closeEditor(entry, true);
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  cancel.addEventListener("click", () => closeEditor(entry, true));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = input.value;
    if (!content.trim()) return;
    if (state.actionsBusy) {
      showNotice("A reply is still running: save the edit once it has finished.");
      return;
    }
    closeEditor(entry, false);
    sendMessage(content, { editOf: entry.data.id });
  });
  fit();
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

function closeEditor(entry, focusBack) {
  if (!entry.editor) return;
  entry.editor.remove();
  entry.editor = null;
  entry.el.classList.remove("msg--editing");
  if (focusBack) entry.el.querySelector('[data-action="edit"]')?.focus();
}

// An edit the server refused (busy, say): the message shows again with the editor open on the
// text that was sent, so nothing typed is lost.
export function reopenEdit(send) {
  const entry = send.editOf && state.messages.get(send.editOf);
  if (entry) openEditor(entry, send.content);
  else if (!dom.input.value) dom.input.value = send.content;
}
