// The session socket: JSON frames, automatic reconnect with exponential backoff and jitter.
//
// States: "connecting", "connected", "reconnecting", "offline". The server sends
// `session.ready` on every connect, so nothing needs to be asked for after a reconnect.

const CLOSE_UNAUTHENTICATED = 4401;
const CLOSE_NOT_FOUND = 4404;

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
      if (Date.now() - this.lastFrameAt > 75000) {
        this.ws.close(4000, "heartbeat timeout");
        return;
      }
      if (Date.now() - this.lastFrameAt > 25000) this.send({ type: "ping" });
    }, 25000);
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
    ws.onmessage = (event) => {
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
