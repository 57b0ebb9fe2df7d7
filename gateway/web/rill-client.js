// rill-client.js — a small browser client for rill's WebSocket protocol
// (rill.json.v1, text frames).  No dependencies; an ES module.
//
//   import { RillClient } from "./rill-client.js";
//   const rill = new RillClient();                 // ws(s)://<this host>/stream
//   rill.addEventListener("status", e => console.log(e.detail.state, e.detail.resuming));
//   const g = rill.generate("Once upon a time", { max_tokens: 50, params: { temperature: 0 } });
//   g.addEventListener("token", e => out.append(e.detail.text));
//   const { finish_reason, summary } = await g.done;   // rejects with a RillError
//
// The client reconnects by itself when the connection drops (exponential
// backoff with jitter; not after close()), and then resumes every open
// generation: the gateway keeps a dropped connection's generations running
// for resume_window_s, and `{type: "resume", resume_token, from}` on the new
// connection replays what was missed and goes on live.  `from` is the
// generation's last received position + 1, and tokens at positions already
// seen are dropped, so a Generation's text has nothing lost and nothing twice
// however often the connection drops.  While it is away the generation emits
// "reconnecting", then "resumed"; the status event says how many generations
// wait to be resumed (detail.resuming).  A generation sent but not yet
// accepted when the socket dropped has no resume token: it is sent again
// (the gateway cannot have delivered any of its tokens).  A resume the
// gateway refuses (the window passed, or the gateway restarted and no longer
// knows the token) ends the generation with its error, code "resume_failed"
// (not recoverable); the tokens received so far stay in `tokens`.  With
// { resume: false } (or reconnect: false) a drop ends every open generation
// with the client-side error code "disconnected" (recoverable), as before.
// "tokens" frames (several tokens coalesced by a gateway whose client is
// behind) are unpacked, so a Generation always emits one "token" event per
// token, in position order.

export class RillError extends Error {
  constructor({ code = "internal", message = "", recoverable = false } = {}) {
    super(message || code);
    this.name = "RillError";
    this.code = code;
    this.recoverable = recoverable;
  }
}

// One generation.  Events: "accepted" {worker, resume_token}, "token" {id,
// text, position, latency_ms, logprob, ...}, "reconnecting" {from},
// "resumed" {from}, "complete" {finish_reason, summary}, "error" RillError.
// `done` settles when the generation ends.
export class Generation extends EventTarget {
  constructor(client, id, request) {
    super();
    this.client = client;
    this.id = id;
    this.worker = null;
    this.tokens = [];
    this.ended = false;
    this.resumeToken = null; // from "accepted"; what a resume names
    this.nextPosition = 0;   // the first position not received yet
    this.reconnecting = false;
    this._request = request; // the generate message, to send again if it was never accepted
    this._cancelled = false;
    this._accepted = false;
    this.done = new Promise((resolve, reject) => { this._resolve = resolve; this._reject = reject; });
    this.done.catch(() => {}); // a caller that only listens to events must not see "unhandled rejection"
  }

  get text() { return this.tokens.map((t) => t.text).join(""); }

  cancel() {
    if (this.ended) return;
    this._cancelled = true;
    this.client.cancel(this.id);
  }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  _end(ok, value) {
    if (this.ended) return;
    this.ended = true;
    this.reconnecting = false;
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
  // log), reconnect (default true), resume (default true: resume open
  // generations after a reconnect), minDelayMs / maxDelayMs (backoff).
  constructor(url = defaultUrl(), options = {}) {
    super();
    this.url = url;
    this.opts = { client: "rill-web", reconnect: true, resume: true, minDelayMs: 250, maxDelayMs: 8000, ...options };
    this.state = "idle"; // idle | connecting | open | waiting | closed
    this.server = null;  // the server's hello: max_tokens_limit, max_streams, ...
    this._gens = new Map();
    this._queue = [];    // messages of no generation (cancel all) waiting for a socket
    this._attempt = 0;
    this._seq = 0;
    this._timer = null;
    this._ws = null;
    this._stopped = false;
    // The device says its network is back (a phone off a tunnel): no need
    // to sit out the rest of the backoff.
    globalThis.addEventListener?.("online", () => {
      if (this._timer && !this._stopped) { clearTimeout(this._timer); this._timer = null; this.connect(); }
    });
  }

  // Generations waiting for a connection to resume them.
  get resuming() { let n = 0; for (const g of this._gens.values()) if (g.reconnecting) n++; return n; }

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
      // Every open generation goes (again) on this socket, in the order
      // they were started: a new one is sent, a dropped one resumed.
      for (const g of this._gens.values()) {
        if (g._ws === ws) continue;
        g._ws = ws;
        if (g.resumeToken)
          ws.send(JSON.stringify({ type: "resume", id: g.id, resume_token: g.resumeToken, from: g.nextPosition }));
        else
          ws.send(JSON.stringify(g._request));
        if (g._cancelled) ws.send(JSON.stringify({ type: "cancel", id: g.id }));
      }
      for (const m of this._queue.splice(0)) ws.send(m);
      this._setState("open");
    };
    ws.onmessage = (ev) => { if (this._ws === ws) this._onMessage(ev.data); };
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._ws = null;
      const why = ev.reason || (ev.code === 1006 ? "connection lost" : `closed (${ev.code})`);
      const again = !this._stopped && this.opts.reconnect;
      for (const g of [...this._gens.values()]) {
        if (g._ws !== ws) continue; // not sent yet: it goes on the next socket
        g._ws = null;
        if (again && this.opts.resume && g.resumeToken) {
          g.reconnecting = true;
          g._emit("reconnecting", { from: g.nextPosition });
        } else if (again && this.opts.resume && !g._cancelled && !g._accepted) {
          // Never accepted: no token reached it, so sending it again loses
          // nothing and repeats nothing.
        } else if (g._cancelled && !g._accepted) {
          g._end(true, { finish_reason: "cancelled", summary: {} });
        } else {
          g._end(false, new RillError({ code: "disconnected", message: why, recoverable: true }));
        }
      }
      this._queue.length = 0;
      if (!again) this._setState("closed", { reason: why });
      else this._scheduleRetry(why);
    };
    return this;
  }

  // Close for good: open generations are cancelled (the gateway would keep
  // them running for a resume otherwise) and end with "disconnected".
  close() {
    this._stopped = true;
    clearTimeout(this._timer);
    this._timer = null;
    const ws = this._ws;
    if (ws) {
      if (ws.readyState === WebSocket.OPEN && this._gens.size) ws.send(JSON.stringify({ type: "cancel" }));
      ws.close(1000);
    } else {
      for (const g of [...this._gens.values()])
        g._end(false, new RillError({ code: "disconnected", message: "closed", recoverable: true }));
      this._setState("closed");
    }
  }

  // Start a generation; returns its Generation at once.  Sent now if the
  // socket is open, else when it opens.  `id` is made up unless given.
  // `prompt` is text, or chat messages ([{role, content}]) that the worker
  // renders with the model's chat template.
  generate(prompt, { max_tokens, params, id } = {}) {
    id = id ?? `web-${Date.now().toString(36)}-${++this._seq}`;
    const msg = Array.isArray(prompt) ? { type: "generate", id, messages: prompt } : { type: "generate", id, prompt };
    if (max_tokens != null) msg.max_tokens = max_tokens;
    if (params) msg.params = params;
    const g = new Generation(this, id, msg);
    this._gens.set(String(id), g);
    if (this._open()) {
      g._ws = this._ws;
      this._ws.send(JSON.stringify(msg));
    } else {
      this._wake();
    }
    return g;
  }

  // Cancel one generation, or every one of this connection without an id.
  // Idempotent; the generation then completes with finish_reason "cancelled".
  cancel(id) {
    if (id != null) {
      const g = this._gens.get(String(id));
      if (g) g._cancelled = true;
      // Not on the open socket yet: the cancel follows its generate or resume.
      if (g && !(this._open() && g._ws === this._ws)) return;
    }
    this._send(id == null ? { type: "cancel" } : { type: "cancel", id });
  }

  _open() { return this._ws && this._ws.readyState === WebSocket.OPEN; }

  _send(msg) {
    const s = JSON.stringify(msg);
    if (this._open()) this._ws.send(s);
    else {
      this._queue.push(s);
      this._wake();
    }
  }

  // Someone is waiting: skip the rest of the backoff.
  _wake() {
    if (!this._ws && !this._stopped) { clearTimeout(this._timer); this._timer = null; this.connect(); }
  }

  _setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("status", { detail: { state, resuming: this.resuming, ...extra } }));
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
        if (g) {
          g._accepted = true;
          g.worker = m.worker;
          g.resumeToken = m.resume_token ?? null;
          g._emit("accepted", { worker: m.worker, resume_token: g.resumeToken });
        }
        break;
      case "resumed":
        if (g && g.reconnecting) {
          g.reconnecting = false;
          g._emit("resumed", { from: m.from });
          if (!this.resuming) this._setState(this.state);
        }
        break;
      case "token":
      case "tokens":
        if (!g) break;
        for (const t of m.type === "token" ? [m.token] : m.tokens) {
          // A replay that overlaps what arrived before the drop: once only.
          if (typeof t.position === "number") {
            if (t.position < g.nextPosition) continue;
            g.nextPosition = t.position + 1;
          }
          g.tokens.push(t);
          g._emit("token", t);
        }
        break;
      case "complete":
        if (g) g._end(true, { finish_reason: m.finish_reason, summary: m.summary || {} });
        break;
      case "error": {
        const err = new RillError(m.error || {});
        const wasResuming = g && g.reconnecting;
        if (g) g._end(false, err);
        else this.dispatchEvent(new CustomEvent("error", { detail: err }));
        if (wasResuming && !this.resuming) this._setState(this.state);
        break;
      }
    }
  }
}
