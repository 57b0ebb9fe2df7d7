// rill-client.js — a small browser client for rill's WebSocket protocol
// (rill.json.v1, text frames).  No dependencies; an ES module.
//
//   import { RillClient } from "./rill-client.js";
//   const rill = new RillClient();                 // ws(s)://<this host>/stream
//   rill.addEventListener("status", e => console.log(e.detail.state));
//   const g = rill.generate("Once upon a time", { max_tokens: 50, params: { temperature: 0 } });
//   g.addEventListener("token", e => out.append(e.detail.text));
//   const { finish_reason, summary } = await g.done;   // rejects with a RillError
//
// The client reconnects by itself (exponential backoff with jitter).  The
// gateway cancels a connection's generations when it closes, so a generation
// running when the socket drops ends with the client-side error code
// "disconnected" (recoverable: send it again).  "tokens" frames (several
// tokens coalesced by a gateway whose client is behind) are unpacked, so a
// Generation always emits one "token" event per token, in position order.

export class RillError extends Error {
  constructor({ code = "internal", message = "", recoverable = false } = {}) {
    super(message || code);
    this.name = "RillError";
    this.code = code;
    this.recoverable = recoverable;
  }
}

// One generation.  Events: "accepted" {worker}, "token" {id, text, position,
// latency_ms, logprob, ...}, "complete" {finish_reason, summary},
// "error" RillError.  `done` settles when the generation ends.
export class Generation extends EventTarget {
  constructor(client, id) {
    super();
    this.client = client;
    this.id = id;
    this.worker = null;
    this.tokens = [];
    this.ended = false;
    this.done = new Promise((resolve, reject) => { this._resolve = resolve; this._reject = reject; });
    this.done.catch(() => {}); // a caller that only listens to events must not see "unhandled rejection"
  }

  get text() { return this.tokens.map((t) => t.text).join(""); }

  cancel() { if (!this.ended) this.client.cancel(this.id); }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  _end(ok, value) {
    if (this.ended) return;
    this.ended = true;
    this.client._gens.delete(String(this.id));
    this._emit(ok ? "complete" : "error", value);
    if (ok) this._resolve(value); else this._reject(value);
  }
}

function defaultUrl() {
  const loc = globalThis.location;
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/stream`;
}

export class RillClient extends EventTarget {
  // options: key (API key, sent in hello), client (name for the server's
  // log), reconnect (default true), minDelayMs / maxDelayMs (backoff).
  constructor(url = defaultUrl(), options = {}) {
    super();
    this.url = url;
    this.opts = { client: "rill-web", reconnect: true, minDelayMs: 250, maxDelayMs: 8000, ...options };
    this.state = "idle"; // idle | connecting | open | waiting | closed
    this.server = null;  // the server's hello: max_tokens_limit, max_streams, ...
    this._gens = new Map();
    this._queue = [];
    this._attempt = 0;
    this._seq = 0;
    this._timer = null;
    this._ws = null;
    this._stopped = false;
  }

  connect() {
    this._stopped = false;
    if (this._ws || this._timer) return this;
    this._setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url, "rill.json.v1");
    } catch (e) {
      this._scheduleRetry(String(e.message || e));
      return this;
    }
    this._ws = ws;
    ws.onopen = () => {
      this._attempt = 0;
      const hello = { type: "hello", client: { name: this.opts.client } };
      if (this.opts.key) hello.key = this.opts.key;
      ws.send(JSON.stringify(hello));
      for (const m of this._queue.splice(0)) ws.send(m);
      this._setState("open");
    };
    ws.onmessage = (ev) => this._onMessage(ev.data);
    ws.onclose = (ev) => {
      this._ws = null;
      const why = ev.reason || (ev.code === 1006 ? "connection lost" : `closed (${ev.code})`);
      for (const g of [...this._gens.values()])
        g._end(false, new RillError({ code: "disconnected", message: why, recoverable: true }));
      this._queue.length = 0;
      if (this._stopped || !this.opts.reconnect) this._setState("closed", { reason: why });
      else this._scheduleRetry(why);
    };
    return this;
  }

  close() {
    this._stopped = true;
    clearTimeout(this._timer);
    this._timer = null;
    if (this._ws) this._ws.close(1000);
    else this._setState("closed");
  }

  // Start a generation; returns its Generation at once.  Sent now if the
  // socket is open, else when it opens.  `id` is made up unless given.
  generate(prompt, { max_tokens, params, id } = {}) {
    id = id ?? `web-${Date.now().toString(36)}-${++this._seq}`;
    const g = new Generation(this, id);
    this._gens.set(String(id), g);
    const msg = { type: "generate", id, prompt };
    if (max_tokens != null) msg.max_tokens = max_tokens;
    if (params) msg.params = params;
    this._send(msg);
    return g;
  }

  // Cancel one generation, or every one of this connection without an id.
  // Idempotent; the generation then completes with finish_reason "cancelled".
  cancel(id) { this._send(id == null ? { type: "cancel" } : { type: "cancel", id }); }

  _send(msg) {
    const s = JSON.stringify(msg);
    if (this._ws && this._ws.readyState === WebSocket.OPEN) this._ws.send(s);
    else {
      this._queue.push(s);
      // Someone is waiting: skip the rest of the backoff.
      if (!this._ws) { clearTimeout(this._timer); this._timer = null; this.connect(); }
    }
  }

  _setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("status", { detail: { state, ...extra } }));
  }

  _scheduleRetry(reason) {
    if (this._timer) return;
    const cap = Math.min(this.opts.maxDelayMs, this.opts.minDelayMs * 2 ** this._attempt++);
    const delay = Math.round(cap / 2 + Math.random() * cap / 2);
    this._setState("waiting", { reason, retryAt: Date.now() + delay });
    this._timer = setTimeout(() => { this._timer = null; this.connect(); }, delay);
  }

  _onMessage(data) {
    let m;
    try { m = JSON.parse(data); } catch { return; }
    const g = m.id != null ? this._gens.get(String(m.id)) : undefined;
    switch (m.type) {
      case "hello":
        this.server = m;
        this.dispatchEvent(new CustomEvent("hello", { detail: m }));
        break;
      case "accepted":
        if (g) { g.worker = m.worker; g._emit("accepted", { worker: m.worker }); }
        break;
      case "token":
      case "tokens":
        if (!g) break;
        for (const t of m.type === "token" ? [m.token] : m.tokens) {
          g.tokens.push(t);
          g._emit("token", t);
        }
        break;
      case "complete":
        if (g) g._end(true, { finish_reason: m.finish_reason, summary: m.summary || {} });
        break;
      case "error": {
        const err = new RillError(m.error || {});
        if (g) g._end(false, err);
        else this.dispatchEvent(new CustomEvent("error", { detail: err }));
        break;
      }
    }
  }
}
