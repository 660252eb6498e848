// One channel's websocket (the 3.x dialect: every frame from the server carries an id and a
// timestamp): register the nickname, reconnect with backoff after a drop or a server restart,
// re-register, and tell the page what happened through callbacks.

const BACKOFF = [500, 1000, 2000, 4000, 8000, 15000];

export function channelSocketUrl(channel) {
  // Relative to the page, so an instance under a path prefix works; same origin, as the
  // server's Origin check requires. Channel X is the conversation QTribu calls room X.
  const url = new URL(`channel/${encodeURIComponent(channel)}/ws`, document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.hash = "";
  return url.href;
}

export class ChannelConnection {
  // handlers: message(msg, {replay}), joined({again}), refused(reason), lost({code}),
  // retrying({delay, attempt, reason}), failed(reason)
  constructor(room, nickname, handlers) {
    this.room = room;
    this.nickname = nickname;
    this.handlers = handlers;
    this.socket = null;
    this.pending = []; // messages received before the nickname was accepted
    this.registered = false; // this socket's nickname is accepted
    this.everJoined = false; // a socket of this session was accepted once
    this.attempt = 0;
    this.timer = null;
    this.closed = false;
    this.onOnline = () => {
      if (this.timer !== null) this.retryNow();
    };
    window.addEventListener("online", this.onOnline);
  }

  open() {
    this.timer = null;
    const socket = new WebSocket(channelSocketUrl(this.room));
    this.socket = socket;
    this.registered = false;
    this.pending = [];
    socket.addEventListener("open", () => {
      this.sendNow({ type: "newcomer", newcomer: this.nickname });
    });
    socket.addEventListener("message", (event) => {
      if (socket !== this.socket) return;
      this.receive(event.data);
    });
    socket.addEventListener("close", (event) => {
      if (socket !== this.socket || this.closed) return;
      this.socket = null;
      this.dropped(event.code);
    });
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (!message || typeof message !== "object") return;
    if (!this.registered) {
      if (message.type === "newcomer" && message.newcomer === this.nickname) {
        this.registered = true;
        const again = this.everJoined;
        this.everJoined = true;
        this.attempt = 0;
        this.handlers.joined({ again });
        const replayed = this.pending;
        this.pending = [];
        for (const earlier of replayed) this.handlers.message(earlier, { replay: true });
        this.handlers.message(message, { replay: false });
        return;
      }
      if (message.type === "uncompliant") {
        // The only thing this socket sent is its nickname: this is the answer to it.
        const reason = String(message.reason ?? "refused");
        if (!this.everJoined) {
          this.close();
          this.handlers.refused(reason);
        } else {
          this.abandonSocket();
          this.scheduleRetry(reason);
        }
        return;
      }
      // Before our registration is answered, the server may replay the room's last messages:
      // they are shown once the nickname is accepted (and never if it is refused).
      this.pending.push(message);
      return;
    }
    this.handlers.message(message, { replay: false });
  }

  dropped(code) {
    this.registered = false;
    if (!this.everJoined) {
      this.close();
      this.handlers.failed(code === 1006 ? "could not reach the room" : `connection closed (code ${code})`);
      return;
    }
    if (this.attempt === 0) this.handlers.lost({ code });
    this.scheduleRetry(null);
  }

  abandonSocket() {
    const socket = this.socket;
    this.socket = null;
    this.registered = false;
    closeQuietly(socket);
  }

  scheduleRetry(reason) {
    const base = BACKOFF[Math.min(this.attempt, BACKOFF.length - 1)];
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempt += 1;
    this.handlers.retrying({ delay, attempt: this.attempt, reason });
    this.timer = setTimeout(() => this.open(), delay);
  }

  retryNow() {
    clearTimeout(this.timer);
    this.open();
  }

  get connected() {
    return this.registered && this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  sendNow(message) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  // Messages other than the registration go out only while registered.
  send(message) {
    return this.connected && this.sendNow(message);
  }

  // The person left the room: no reconnection.
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = null;
    window.removeEventListener("online", this.onOnline);
    const socket = this.socket;
    this.socket = null;
    closeQuietly(socket);
  }
}

// Closing a socket that is still connecting makes the browser log an error: wait for it.
function closeQuietly(socket) {
  if (!socket) return;
  if (socket.readyState === WebSocket.CONNECTING) {
    socket.addEventListener("open", () => socket.close(1000));
  } else if (socket.readyState === WebSocket.OPEN) {
    socket.close(1000);
  }
}
