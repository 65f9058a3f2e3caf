// REST calls with the session cookie and Django's CSRF header.

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `Request failed (${status})`);
    this.status = status;
    this.code = (body && body.code) || "http_error";
    this.body = body;
  }
}

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

// Pagination links are absolute URLs built by the server; keep only path and query so the
// request always goes to the page's own origin (and scheme, behind a TLS proxy).
export function relativeUrl(link) {
  if (!link) return null;
  const url = new URL(link, location.href);
  return url.pathname + url.search;
}

export async function request(method, path, body, headers = {}) {
  const init = {
    method,
    credentials: "same-origin",
    headers: { Accept: "application/json", ...headers },
  };
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRFToken"] = csrfToken();
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, { code: "network_error", detail: "The server could not be reached." });
  }
  if (response.status === 204) return null;
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text.slice(0, 200) };
    }
  }
  if (response.status === 401 || response.status === 403) {
    if (response.status === 401 || (data && data.code === "not_authenticated")) {
      location.assign(`/accounts/login/?next=${encodeURIComponent(location.pathname + location.search)}`);
    }
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export const api = {
  agents: () => request("GET", "/api/v1/agents/"),
  sessions: (url) => request("GET", url || "/api/v1/sessions/?limit=50"),
  createSession: (data) => request("POST", "/api/v1/sessions/", data),
  getSession: (id) => request("GET", `/api/v1/sessions/${id}/`),
  updateSession: (id, data) => request("PATCH", `/api/v1/sessions/${id}/`, data),
  deleteSession: (id) => request("DELETE", `/api/v1/sessions/${id}/`),
  messages: (url) => request("GET", url),
  // The newest page (still ascending by seq), with a `previous` link to older pages.
  latestMessagesUrl: (id, limit = 100) => `/api/v1/sessions/${id}/messages/?from=end&limit=${limit}`,
  // `extra`: `on_busy`, `edit_of`. The answer is the user Message (201), or `{"queued"}` (202).
  postMessage: (sessionId, content, key, extra = {}) =>
    request("POST", "/api/v1/messages/", { session: sessionId, type: "text", content, ...extra }, { "Idempotency-Key": key }),
  regenerate: (messageId) => request("POST", `/api/v1/messages/${messageId}/regenerate/`, {}),
  switchBranch: (sessionId, messageId) => request("POST", `/api/v1/sessions/${sessionId}/switch/`, { message: messageId }),
  cancelQueued: (sessionId, queuedId) => request("DELETE", `/api/v1/sessions/${sessionId}/queue/${queuedId}/`),
  react: (messageId, emoji) => request("POST", `/api/v1/messages/${messageId}/reactions/`, { emoji }),
  unreact: (messageId, emoji) =>
    request("DELETE", `/api/v1/messages/${messageId}/reactions/${encodeURIComponent(emoji)}/`),
};
