// Search over the user's own messages (GET /api/v1/search/): a box in the sidebar, results in
// place of the chat list while it holds a query, each result a link to its message. Snippets
// are plain text from the server with the matched ranges given apart, so they are built as text
// nodes and <mark> elements here, never parsed as markup.

import { relativeUrl, request } from "./api.js";

const DEBOUNCE_MS = 300;

// The server's ranges count Unicode code points; JavaScript strings count UTF-16 units.
function markedSnippet(snippet, highlights) {
  const chars = Array.from(snippet);
  const out = [];
  let at = 0;
  for (const [start, end] of highlights) {
    if (start < at || end <= start) continue;
    if (start > at) out.push(document.createTextNode(chars.slice(at, start).join("")));
    const mark = document.createElement("mark");
    mark.textContent = chars.slice(start, end).join("");
    out.push(mark);
    at = end;
  }
  if (at < chars.length) out.push(document.createTextNode(chars.slice(at).join("")));
  return out;
}

export function initSearch({ onOpen, errorText }) {
  const form = document.getElementById("search-form");
  const input = document.getElementById("search-input");
  const panel = document.getElementById("search-results");
  const status = document.getElementById("search-status");
  const list = document.getElementById("search-list");
  const more = document.getElementById("search-more");
  const sessions = document.getElementById("sessions");
  let timer = null;
  let asked = 0; // answers to older queries are dropped
  let nextUrl = null;

  function show(searching) {
    panel.hidden = !searching;
    sessions.hidden = searching;
  }

  function render(results, append) {
    if (!append) list.replaceChildren();
    for (const hit of results) {
      const title = hit.session.title || "New chat";
      const link = document.createElement("button");
      link.type = "button";
      link.className = "search-hit";
      link.dataset.messageId = hit.message.id;
      const head = document.createElement("span");
      head.className = "search-hit__title";
      const who = { user: "You", assistant: "Assistant", tool: "Tool", system: "System" }[hit.message.role] || hit.message.role;
      head.textContent = `${title} · ${who}`;
      const body = document.createElement("span");
      body.className = "search-hit__snippet";
      body.append(...markedSnippet(hit.snippet, hit.highlights));
      link.append(head, body);
      link.addEventListener("click", () => onOpen(hit.session.id, hit.message.id, hit.message.seq));
      const li = document.createElement("li");
      li.append(link);
      list.append(li);
    }
  }

  async function run(url, append) {
    const ticket = ++asked;
    status.textContent = "Searching…";
    try {
      const page = await request("GET", url);
      if (ticket !== asked) return;
      render(page.results, append);
      nextUrl = relativeUrl(page.next);
      more.hidden = !nextUrl;
      const shown = list.children.length;
      status.textContent = shown ? `${shown}${nextUrl ? "+" : ""} message${shown === 1 && !nextUrl ? "" : "s"} found` : "Nothing found.";
    } catch (err) {
      if (ticket === asked) status.textContent = errorText(err);
    }
  }

  function search(now) {
    clearTimeout(timer);
    const q = input.value.trim();
    if (!q) {
      asked += 1;
      list.replaceChildren();
      show(false);
      return;
    }
    show(true);
    timer = setTimeout(() => run(`/api/v1/search/?${new URLSearchParams({ q, limit: "20" })}`, false), now ? 0 : DEBOUNCE_MS);
  }

  input.addEventListener("input", () => search(false));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    search(true);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      input.value = "";
      search(true);
    }
  });
  more.addEventListener("click", () => nextUrl && run(nextUrl, true));
}
