// The session socket: JSON frames, automatic reconnect with exponential backoff and jitter.
//
// States: "connecting", "connected", "reconnecting", "offline". The server sends
// `session.ready` on every connect, so nothing needs to be asked for after a reconnect.

const CLOSE_UNAUTHENTICATED = 4401;
const CLOSE_NOT_FOUND = 4404;
const PING_AFTER_MS = 25000;
const DEAD_AFTER_MS = 75000;

export class ChatSocket {
  constructor(sessionId, { onFrame, onState, onFatal }) {
    this.sessionId = sessionId;
    this.onFrame = onFrame;
    this.onState = onState;
    this.onFatal = onFatal;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.closed = false;
    this.state = "connecting";
    this.retryAt = 0;
    this.lastFrameAt = Date.now();
    // A quiet connection is checked with a ping; one that stays silent is replaced.
    this.heartbeat = setInterval(() => {
      if (!this.isOpen) return;
      const quiet = Date.now() - this.lastFrameAt;
      if (quiet > DEAD_AFTER_MS) {
        this.dropDeadLink();
        return;
      }
      if (quiet > PING_AFTER_MS) this.send({ type: "ping" });
    }, PING_AFTER_MS);
    this._online = () => this.reconnectNow();
    this._offline = () => this.setState("offline");
    window.addEventListener("online", this._online);
    window.addEventListener("offline", this._offline);
    this.open();
  }

  get url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws/sessions/${this.sessionId}/`;
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  setState(state) {
    this.state = state;
    this.onState(state, this);
  }

  open() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.closed) return;
    if (!navigator.onLine) {
      this.setState("offline");
      return;
    }
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws === ws) this.lastFrameAt = Date.now();
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return; // a socket that was given up on
      this.lastFrameAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame && frame.type === "session.ready") {
        this.attempt = 0;
        this.setState("connected");
      }
      this.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.closed) return;
      if (event.code === CLOSE_UNAUTHENTICATED || event.code === CLOSE_NOT_FOUND) {
        this.close();
        this.setState("offline");
        this.onFatal(event.code);
        return;
      }
      this.scheduleReconnect();
    };
    ws.onerror = () => {
      // onclose follows and decides what to do.
    };
  }

  // A link that stays silent is dead, but closing it may not fire `onclose` for a long time (the
  // closing handshake waits for a peer that is gone). It is let go of at once, and the next
  // connection is scheduled here.
  dropDeadLink() {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(4000, "heartbeat timeout");
    } catch {
      // Closing a dead socket may throw; it is already let go of.
    }
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    if (this.closed) return;
    this.attempt += 1;
    const base = Math.min(15000, 500 * 2 ** (this.attempt - 1));
    const delay = base / 2 + Math.random() * (base / 2);
    this.retryAt = Date.now() + delay;
    this.setState(navigator.onLine ? "reconnecting" : "offline");
    this.timer = setTimeout(() => this.open(), delay);
  }

  reconnectNow() {
    if (this.closed || this.isOpen || (this.ws && this.ws.readyState === WebSocket.CONNECTING)) return;
    this.open();
  }

  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.heartbeat);
    window.removeEventListener("online", this._online);
    window.removeEventListener("offline", this._offline);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000);
    }
  }
}
