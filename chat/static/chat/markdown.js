// Markdown for assistant replies. Model output is untrusted: marked turns it into HTML (raw
// HTML in the text is escaped and shown as text) and DOMPurify removes anything active before it
// reaches the DOM. Images are not loaded (an image URL written by a model can leak conversation
// data to another site); they become links.

import { Marked } from "./vendor/marked/marked.esm.js";
import DOMPurify from "./vendor/dompurify/purify.es.mjs";

const escapeHtml = (text) =>
  String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    // Raw HTML in a reply is shown as text, the way it was written: it is never markup.
    html({ text }) {
      return escapeHtml(text);
    },
    image({ href, text }) {
      const label = escapeHtml(text || href || "image");
      return href ? `<a href="${escapeHtml(href)}">${label}</a>` : label;
    },
  },
});

const purifier = DOMPurify(window);
purifier.addHook("uponSanitizeAttribute", (node, data) => {
  // The only class kept is a code block's language, shown on its label.
  if (data.attrName === "class" && !(node.nodeName === "CODE" && /^language-[\w#+.-]{1,30}$/.test(data.attrValue))) {
    data.keepAttr = false;
  }
});
purifier.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    const href = node.getAttribute("href") || "";
    if (!/^(https?:|mailto:|#)/i.test(href)) node.removeAttribute("href");
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

const PURIFY_OPTIONS = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "option", "iframe", "video", "audio", "source", "picture", "svg", "math"],
  FORBID_ATTR: ["style", "id", "srcset"],
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

export function renderMarkdown(text) {
  let html;
  try {
    html = marked.parse(text || "");
  } catch {
    html = `<p>${escapeHtml(text || "")}</p>`;
  }
  const fragment = purifier.sanitize(html, PURIFY_OPTIONS);
  // Code blocks get a copy button (built here, never from the model's text).
  for (const pre of fragment.querySelectorAll("pre")) {
    const wrap = document.createElement("div");
    wrap.className = "codeblock";
    const code = pre.querySelector("code");
    const lang = code && /^language-(.+)$/.exec(code.className || "");
    const bar = document.createElement("div");
    bar.className = "codeblock__bar";
    const label = document.createElement("span");
    label.className = "codeblock__lang";
    label.textContent = lang ? lang[1] : "code";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "btn btn--ghost btn--tiny codeblock__copy";
    copy.dataset.action = "copy-code";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy code");
    bar.append(label, copy);
    pre.replaceWith(wrap);
    wrap.append(bar, pre);
  }
  return fragment;
}

export { escapeHtml };
