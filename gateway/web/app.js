// app.js — the try-it page: a prompt, sampling controls, and the answer
// streaming in token by token with each token's latency.  The protocol lives
// in rill-client.js; this file is only the page.
import { RillClient } from "./rill-client.js";

const $ = (id) => document.getElementById(id);
const el = {
  form: $("form"), prompt: $("prompt"), generate: $("generate"), cancel: $("cancel"),
  conn: $("conn"), connText: $("conn-text"), output: $("output"), spark: $("spark"),
  tokinfo: $("tokinfo"), announce: $("announce"), error: $("error"),
  summary: $("summary"), summaryList: $("summary-list"),
  live: { tokens: $("live-tokens"), ttft: $("live-ttft"), last: $("live-last"), tps: $("live-tps"), worker: $("live-worker") },
};

// An API key may come with the page's address (#key=… stays in the browser).
const key = new URLSearchParams(location.hash.slice(1)).get("key") ||
            new URLSearchParams(location.search).get("key") || undefined;
const rill = new RillClient(undefined, { key, client: "rill-web" });

// --- formatting ---------------------------------------------------------------------------------

const ms = (v) => (v == null || !isFinite(v) ? "–" : `${v.toFixed(v < 1 ? 2 : v < 100 ? 1 : 0)} ms`);
const num = (v, d = 1) => (v == null || !isFinite(v) ? "–" : v.toFixed(d));
const show = (text) => JSON.stringify(text); // makes spaces and newlines of a token visible

// --- connection status --------------------------------------------------------------------------

let retryTick = null;
rill.addEventListener("status", ({ detail }) => {
  clearInterval(retryTick);
  el.conn.dataset.state = detail.state;
  const say = (t) => { el.connText.textContent = t; };
  // An answer is waiting to be resumed: say so until the gateway took it
  // up again; the text then just goes on.
  el.conn.dataset.resuming = String(detail.resuming || 0);
  if (detail.resuming && detail.state !== "closed") say("Reconnecting…");
  else if (detail.state === "open") say("Connected");
  else if (detail.state === "connecting") say("Connecting…");
  else if (detail.state === "closed") say("Disconnected");
  else if (detail.state === "waiting") {
    const tick = () => say(`Offline — retrying in ${Math.max(0, Math.ceil((detail.retryAt - Date.now()) / 1000))} s`);
    tick();
    retryTick = setInterval(tick, 1000);
  }
});
rill.addEventListener("hello", ({ detail }) => {
  if (detail.max_tokens_limit) $("max_tokens").max = String(detail.max_tokens_limit);
});
rill.addEventListener("error", ({ detail }) => showError(detail)); // errors of the connection, not of one generation

// --- one generation at a time -------------------------------------------------------------------

let gen = null;   // the running Generation
let run = null;   // its page-side figures

function readParams() {
  const v = (id) => $(id).valueAsNumber;
  const params = {
    temperature: v("temperature"), top_p: v("top_p"), top_k: v("top_k"),
    min_p: v("min_p"), repetition_penalty: v("repetition_penalty"),
  };
  for (const k of Object.keys(params)) if (Number.isNaN(params[k])) delete params[k];
  if (!Number.isNaN(v("seed"))) params.seed = v("seed");
  const stop = parseStop($("stop").value);
  if (stop.length) params.stop = stop;
  return { max_tokens: v("max_tokens"), params };
}

// "a, b\n\n, c\,d" -> ["a", "b\n\n", "c,d"]
function parseStop(s) {
  const out = [];
  let cur = "";
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === "\\" && i + 1 < s.length) {
      const n = s[++i];
      cur += n === "n" ? "\n" : n === "t" ? "\t" : n;
    } else if (c === ",") { out.push(cur); cur = ""; }
    else cur += c;
  }
  out.push(cur);
  return out.map((x) => x.replace(/^ +| +$/g, "")).filter((x) => x.length);
}

function setRunning(on) {
  document.body.dataset.state = on ? "running" : "done";
  el.generate.disabled = on;
  el.cancel.disabled = !on;
  el.cancel.textContent = "Cancel";
  el.output.setAttribute("aria-busy", String(on));
}

el.form.addEventListener("submit", (e) => {
  e.preventDefault();
  if (gen) return;
  const { max_tokens, params } = readParams();
  el.output.replaceChildren();
  el.summary.hidden = true;
  el.error.hidden = true;
  el.announce.textContent = "Generating…";
  el.tokinfo.textContent = "Hover a token, or focus the output and use ← →, to see its latency.";
  run = { tSend: performance.now(), tFirst: 0, tLast: 0, lat: [], latSum: 0, sel: -1, frame: 0, stick: true };
  updateLive();
  drawSpark();
  setRunning(true);
  // Chat: the conversation so far plus this turn, as messages.
  const turn = el.prompt.value;
  pendingTurn = chat.checked ? turn : null;
  gen = rill.generate(chat.checked ? [...history, { role: "user", content: turn }] : turn, { max_tokens, params });
  gen.addEventListener("accepted", ({ detail }) => { el.live.worker.textContent = detail.worker; });
  gen.addEventListener("token", ({ detail }) => addToken(detail));
  gen.addEventListener("reconnecting", () => { el.announce.textContent = "Connection lost — reconnecting…"; });
  gen.addEventListener("resumed", () => { el.announce.textContent = "Reconnected, generating…"; });
  gen.addEventListener("complete", ({ detail }) => finish(detail, null));
  gen.addEventListener("error", ({ detail }) => finish(null, detail));
});

el.cancel.addEventListener("click", () => {
  if (!gen) return;
  gen.cancel();
  el.cancel.disabled = true;
  el.cancel.textContent = "Cancelling…";
});

document.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && el.form.contains(e.target)) {
    e.preventDefault();
    el.form.requestSubmit();
  } else if (e.key === "Escape" && gen && !el.cancel.disabled) {
    el.cancel.click();
  }
});

function addToken(t) {
  const now = performance.now();
  if (!run.tFirst) run.tFirst = now;
  run.tLast = now;
  const lat = Number(t.latency_ms);
  const i = run.lat.length;
  run.lat.push(lat);
  run.latSum += lat;
  const span = document.createElement("span");
  span.className = "tok";
  if (i >= 4 && lat > 2 * (run.latSum / run.lat.length)) span.classList.add("slow");
  span.dataset.i = String(i);
  span.textContent = t.text;
  span.title = `${ms(lat)} · position ${t.position} · token ${t.id}` +
               (t.logprob != null ? ` · logprob ${num(t.logprob, 2)}` : "");
  el.output.append(span);
  if (!run.frame) run.frame = requestAnimationFrame(() => { run.frame = 0; updateLive(); drawSpark(); follow(); });
}

// Keep the newest text in view, unless the reader scrolled up to look at something.
function follow() { if (run.stick) el.output.scrollTop = el.output.scrollHeight; }
el.output.addEventListener("scroll", () => {
  if (run) run.stick = el.output.scrollHeight - el.output.scrollTop - el.output.clientHeight < 24;
});

function updateLive() {
  const n = run.lat.length;
  el.live.tokens.textContent = String(n);
  el.live.ttft.textContent = n ? ms(run.tFirst - run.tSend) : "–";
  el.live.last.textContent = n ? ms(run.lat[n - 1]) : "–";
  const dt = (run.tLast - run.tFirst) / 1000;
  // Arrival rate once there is enough to measure; before that (or when the
  // gateway coalesced everything into a few frames), the workers' own pace.
  const tps = n > 1 && dt > 0.25 ? (n - 1) / dt : n ? 1000 / (run.latSum / n) : NaN;
  el.live.tps.textContent = num(tps);
  if (!n) el.live.worker.textContent = "–";
}

function drawSpark() {
  const c = el.spark, ctx = c.getContext("2d");
  const w = Math.max(1, Math.round(c.clientWidth * devicePixelRatio));
  const h = Math.max(1, Math.round(c.clientHeight * devicePixelRatio));
  if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
  ctx.clearRect(0, 0, w, h);
  const lat = run ? run.lat : [];
  if (!lat.length) return;
  const css = getComputedStyle(c);
  const max = Math.max(...lat);
  const bw = Math.min(w / lat.length, 12 * devicePixelRatio);
  for (let i = 0; i < lat.length; i++) {
    const bh = Math.max(devicePixelRatio, (lat[i] / max) * (h - 2));
    ctx.fillStyle = i === run.sel ? css.getPropertyValue("--sel") : css.getPropertyValue("--bar");
    ctx.fillRect(i * bw, h - bh, Math.max(1, bw - devicePixelRatio), bh);
  }
}

const SUMMARY = [
  ["total_tokens", "Tokens", (v) => String(v)],
  ["time_to_first_token_ms", "Time to first token", ms],
  ["average_token_latency_ms", "Mean token latency", ms],
  ["p95_token_latency_ms", "p95 token latency", ms],
  ["average_throughput_tokens_per_sec", "Decode rate", (v) => `${num(v)} tok/s`],
  ["end_to_end_throughput_tokens_per_sec", "End-to-end rate", (v) => `${num(v)} tok/s`],
  ["session_duration_sec", "Duration", (v) => `${num(v, 3)} s`],
  ["max_memory_usage_mb", "Peak memory", (v) => `${v} MB`],
  ["most_common_batch_size", "Usual batch size", (v) => String(v)],
  ["error_count", "Errors", (v) => String(v)],
];

// --- chat mode: the conversation is kept here and sent whole each turn ---

const chat = $("chat"), newChat = $("new-chat"), historyList = $("history");
let history = [], pendingTurn = null;

function showHistory() {
  historyList.replaceChildren(...history.map(({ role, content }) => {
    const li = document.createElement("li");
    li.className = `turn ${role}`;
    li.dataset.role = role;
    const who = document.createElement("strong");
    who.textContent = role === "user" ? "You: " : "Model: ";
    li.append(who, document.createTextNode(content));
    return li;
  }));
  historyList.hidden = !history.length;
  newChat.hidden = !chat.checked;
}

chat.addEventListener("change", () => {
  history = [];
  showHistory();
});

newChat.addEventListener("click", () => {
  history = [];
  showHistory();
  el.output.replaceChildren();
});

// A completed turn joins the conversation (a failed or cancelled one does not).
function keepTurn(done) {
  if (pendingTurn == null || !done || done.finish_reason === "cancelled") return;
  const answer = [...el.output.querySelectorAll(".tok")].map((e) => e.textContent).join("");
  history.push({ role: "user", content: pendingTurn }, { role: "assistant", content: answer });
  pendingTurn = null;
  el.prompt.value = "";
  showHistory();
}

function finish(done, err) {
  keepTurn(err ? null : done);
  if (run.frame) cancelAnimationFrame(run.frame);
  run.frame = 0;
  updateLive();
  drawSpark();
  follow();
  gen = null;
  setRunning(false);
  if (err) {
    showError(err);
    el.announce.textContent = `Failed: ${err.code}`;
    return;
  }
  const rows = [["finish_reason", "Finish", done.finish_reason]];
  const known = new Set(SUMMARY.map(([k]) => k).concat("error_rate"));
  for (const [k, label, f] of SUMMARY) if (k in done.summary) rows.push([k, label, f(done.summary[k])]);
  for (const [k, v] of Object.entries(done.summary)) if (!known.has(k)) rows.push([k, k.replace(/_/g, " "), String(v)]);
  el.summaryList.replaceChildren(...rows.map(([k, label, value]) => {
    const div = document.createElement("div");
    div.dataset.key = k;
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = label;
    dd.textContent = value;
    div.append(dt, dd);
    return div;
  }));
  el.summary.hidden = false;
  el.announce.textContent = `Done: ${done.summary.total_tokens ?? run.lat.length} tokens, finish ${done.finish_reason}.`;
}

function showError(err) {
  const code = document.createElement("strong");
  code.textContent = err.code;
  let hint = err.code === "disconnected" || err.recoverable ? " — you can try again." : "";
  if (err.code === "resume_failed")
    hint = " — the connection was lost and the gateway could not continue this answer; the text above is what arrived, generate again for the rest.";
  el.error.replaceChildren(code, `: ${err.message}${hint}`);
  el.error.hidden = false;
}

// --- inspecting tokens (mouse and keyboard) -----------------------------------------------------

function select(i) {
  const spans = el.output.children;
  if (!spans.length) return;
  i = Math.max(0, Math.min(spans.length - 1, i));
  if (run.sel >= 0 && spans[run.sel]) spans[run.sel].classList.remove("sel");
  run.sel = i;
  const s = spans[i];
  s.classList.add("sel");
  el.tokinfo.textContent = `Token ${i + 1} of ${spans.length}: ${show(s.textContent)} — ${s.title}`;
  drawSpark();
}

el.output.addEventListener("mouseover", (e) => {
  const s = e.target.closest(".tok");
  if (s) select(Number(s.dataset.i));
});
el.output.addEventListener("keydown", (e) => {
  const n = el.output.children.length;
  if (!n) return;
  const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
  if (step) select(run.sel < 0 ? 0 : run.sel + step);
  else if (e.key === "Home") select(0);
  else if (e.key === "End") select(n - 1);
  else return;
  e.preventDefault();
  el.output.children[run.sel]?.scrollIntoView({ block: "nearest" });
});

addEventListener("resize", () => drawSpark());
rill.connect();
