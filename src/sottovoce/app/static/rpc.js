// The page's one WebSocket to the app: requests answered by id, notices pushed.
// A lost socket is retried with backoff; the caller hears of it through onState.

export class Rpc {
  constructor({ onNotice, onState }) {
    this.onNotice = onNotice;
    this.onState = onState;
    this.nextId = 1;
    this.waiting = new Map();
    this.delay = 500;
    this.open();
  }

  open() {
    const ws = new WebSocket(`ws://${location.host}/ws`);
    ws.binaryType = "arraybuffer";
    ws.addEventListener("open", () => { this.delay = 500; this.onState(true); });
    ws.addEventListener("message", (e) => this.received(e.data));
    ws.addEventListener("close", () => {
      for (const { reject } of this.waiting.values()) reject(new Error("the app went away"));
      this.waiting.clear();
      this.onState(false);
      setTimeout(() => this.open(), this.delay);
      this.delay = Math.min(this.delay * 2, 8000);
    });
    this.ws = ws;
  }

  received(data) {
    let msg;
    try { msg = JSON.parse(data); } catch { return; }
    if (msg.event) { this.onNotice(msg); return; }
    const waiter = this.waiting.get(msg.id);
    if (!waiter) return;
    this.waiting.delete(msg.id);
    if (msg.ok) waiter.resolve(msg.result); else waiter.reject(new Error(msg.error));
  }

  call(op, args = {}) {
    if (this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new Error("not connected to the app; retrying"));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ id, op, ...args }));
    });
  }

  sendBytes(buffer) { this.ws.send(buffer); }
}
