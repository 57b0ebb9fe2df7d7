// dashboard.js — rill's live telemetry page.
//
// One WebSocket to /stream (rill.json.v1) subscribed to the gateway's
// telemetry ({"type":"subscribe","telemetry":true}); one snapshot a second,
// in the format of docs/telemetry.md.  Snapshots are kept in a column store
// (15 minutes), charts (uPlot, served from node_modules) show the chosen
// window of it, the figures of the moment go to the tiles and the worker
// table.  Without a supervisor the snapshot has no "supervisor" key: the
// panels and columns that only it can fill are hidden.
//
// The page sets no style attributes in markup and no inline script, so the
// gateway's Content-Security-Policy holds; sizes (uPlot's, the table's bars)
// are set through the CSSOM, which CSP allows.
//
// For tests and the curious, globalThis.rillDashboard exposes what was
// received: snapshots, points per series, the series of every chart.

const MAX_POINTS = 900;          // 15 minutes of one-second snapshots
const STALE_MS = 3500;           // open but silent this long: "stale"
const DEAD_MS = 15000;           // ... and this long: reconnect
const PLOT_HEIGHT = 190;
const LEVELS = ["normal", "warning", "critical", "emergency"];

const $ = (id) => document.getElementById(id);
const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

// --- formatting -------------------------------------------------------------------

function fmtRate(v) {
  if (v == null) return "–";
  if (Math.abs(v) >= 10000) return (v / 1000).toFixed(0) + "k";
  if (Math.abs(v) >= 1000) return (v / 1000).toFixed(1) + "k";
  if (Math.abs(v) >= 100 || Number.isInteger(v)) return Math.round(v).toString();
  return v.toFixed(1);
}
function fmtMs(v) {
  if (v == null) return "–";
  if (v === 0) return "0 ms";
  if (v >= 1000) return (v / 1000).toFixed(2) + " s";
  if (v >= 100) return v.toFixed(0) + " ms";
  if (v >= 1) return v.toFixed(1) + " ms";
  return v.toFixed(2) + " ms";
}
function fmtBytes(b) {
  if (b == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(b) >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return (i === 0 || b >= 100 ? b.toFixed(0) : b.toFixed(1)) + " " + units[i];
}
const fmtInt = (v) => (v == null ? "–" : Math.round(v).toString());
const fmtPct = (v) => (v == null ? "–" : (v >= 10 ? v.toFixed(0) : v.toFixed(1)) + "%");
const fmtLevel = (v) => (v == null ? "–" : LEVELS[Math.round(v)] ?? String(v));
// Axis ticks: short numbers (1.5k, 0.25, 30).
function fmtTick(v) {
  if (v == null) return "";
  if (Math.abs(v) >= 1000) return +(v / 1000).toFixed(1) + "k";
  return String(+v.toFixed(2));
}
// Clock time of a tick (seconds since the epoch); seconds when ticks are closer than a minute.
function fmtClock(t, incr) {
  const d = new Date(t * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return incr < 60 ? `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}` : `${p(d.getHours())}:${p(d.getMinutes())}`;
}
const byId = (a, b) => String(a).localeCompare(String(b), undefined, { numeric: true });

// A tiny element builder: properties and dataset only, never a style attribute.
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null) continue;
    if (k === "dataset") Object.assign(el.dataset, v);
    else el[k] = v;
  }
  el.append(...children.filter((c) => c != null && c !== false));
  return el;
}

// --- the column store -------------------------------------------------------------

// store.t: snapshot times (seconds); store.cols: key -> values aligned with t
// (null where a snapshot had no figure, or in a gap while disconnected).
const store = { t: [], cols: new Map(), interval: 1 };

function appendRow(t, row) {
  const n = store.t.length;
  for (const k of Object.keys(row))
    if (!store.cols.has(k)) store.cols.set(k, new Array(n).fill(null));
  store.t.push(t);
  for (const [k, a] of store.cols) a.push(k in row ? row[k] : null);
  const drop = store.t.length - MAX_POINTS;
  if (drop > 0) {
    store.t.splice(0, drop);
    for (const a of store.cols.values()) a.splice(0, drop);
  }
}

// The keys of a family ("w.<id>.tps" -> ids), in a stable order.
function familyIds(prefix, suffix) {
  const ids = [];
  for (const k of store.cols.keys())
    if (k.startsWith(prefix) && k.endsWith(suffix)) ids.push(k.slice(prefix.length, k.length - suffix.length));
  return ids.sort(byId);
}

function lastValue(key, within = 1) {
  const a = store.cols.get(key);
  if (!a) return null;
  for (let i = a.length - 1; i >= 0 && i >= a.length - within; i--) if (a[i] != null) return a[i];
  return null;
}

// What one snapshot contributes to the store.
function rowOf(s) {
  const g = s.gateway || {};
  const r = {
    "g.tps": num(g.tokens_per_s), "g.rps": num(g.requests_per_s), "g.done": num(g.completed_per_s),
    "g.streams": num(g.active_streams), "g.conns": num(g.connections), "g.ready": num(g.workers_ready),
  };
  for (const [name, hist] of [["ttft", g.ttft_ms], ["itl", g.inter_token_ms], ["dlv", g.delivery_ms]]) {
    // An interval without samples has no percentiles: a gap, not a zero.
    const has = hist && !(num(hist.count) === 0);
    for (const p of ["p50", "p95", "p99"]) r[`g.${name}.${p}`] = has ? num(hist[p]) : null;
  }
  // Every code ever seen gets a figure (0 when quiet), so its line drops to 0.
  const perS = g.errors_per_s || {};
  for (const code of new Set([...familyIds("err.", ""), ...Object.keys(perS), ...Object.keys(g.errors_total || {})]))
    r["err." + code] = num(perS[code]) ?? 0;
  let errSum = 0;
  for (const v of Object.values(perS)) errSum += num(v) ?? 0;
  r["g.errors"] = errSum;

  const sup = s.supervisor;
  if (sup) {
    const p = sup.pressure || {};
    const lvl = LEVELS.indexOf(p.level);
    r["m.level"] = lvl >= 0 ? lvl : null;
    r["m.ratio"] = num(p.ratio) != null ? p.ratio * 100 : null;
    r["m.psi_some"] = num(p.psi_some_avg10);
    r["m.psi_full"] = num(p.psi_full_avg10);
  }
  for (const w of workersOf(s)) {
    const id = w.id;
    if (w.tokens_per_s !== undefined) r[`w.${id}.tps`] = num(w.tokens_per_s);
    if (w.batch_cap !== undefined) r[`w.${id}.cap`] = num(w.batch_cap);
    if (w.batch_bound !== undefined) r[`w.${id}.bound`] = num(w.batch_bound);
    if (w.batch_cap !== undefined && w.active !== undefined) r[`w.${id}.active`] = num(w.active);
  }
  return r;
}

// The workers a snapshot describes: the supervisor's (full figures), or
// else whatever the gateway says of them (gateway.workers, if it sends it).
function workersOf(s) {
  if (s.supervisor) return (s.supervisor.processes || []).filter((p) => p.role === "worker" && p.id != null);
  const gw = s.gateway && s.gateway.workers;
  if (!Array.isArray(gw)) return [];
  return gw.filter((w) => w && w.id != null).map((w) => ({
    id: w.id,
    state: w.state ?? (w.up === undefined ? undefined : w.up ? "ready" : "down"),
    active: w.active ?? w.streams ?? w.inflight,
    queued: w.queued,
    tokens_per_s: w.tokens_per_s,
  }));
}

// --- charts -----------------------------------------------------------------------

let theme = {};
function readTheme() {
  const cs = getComputedStyle(document.documentElement);
  const v = (name) => cs.getPropertyValue(name).trim();
  theme = {
    fg: v("--fg"), muted: v("--muted"), grid: v("--grid"), line: v("--line"), accent: v("--accent"),
    ok: v("--ok"), warn: v("--warn"), bad: v("--bad"), worse: v("--worse"),
    p50: v("--p50"), p95: v("--p95"), p99: v("--p99"),
    palette: [1, 2, 3, 4, 5, 6, 7, 8].map((i) => v(`--s${i}`)),
  };
}
function alpha(color, a) {
  const m = /^#([0-9a-f]{6})$/i.exec(color);
  if (!m) return color;
  return color + Math.round(a * 255).toString(16).padStart(2, "0");
}
const pal = (i) => theme.palette[i % theme.palette.length];

// Error codes keep their colour whatever order they appear in.
function codeColor(code) {
  const known = { overloaded: theme.warn, memory_limit_exceeded: theme.worse, worker_lost: theme.bad,
                  internal: theme.bad, timeout: theme.p95, rate_limited: theme.palette[4] };
  if (known[code]) return known[code];
  let hsh = 0;
  for (const c of code) hsh = (hsh * 31 + c.charCodeAt(0)) >>> 0;
  return pal(hsh);
}

const percentiles = (prefix) => [
  { key: `${prefix}.p50`, label: "p50", color: theme.p50, width: 2, gaps: true },
  { key: `${prefix}.p95`, label: "p95", color: theme.p95, width: 1.5, gaps: true },
  { key: `${prefix}.p99`, label: "p99", color: theme.p99, width: 1.5, gaps: true },
];

// Each chart: its series (recomputed each render: workers and error codes
// come and go), how its values read, and what its header says now.  The
// panels only a supervisor can fill say so in the markup (data-needs).
const CHARTS = {
  tps: {
    fmt: fmtRate,
    series: () => [
      { key: "g.tps", label: "delivered (all)", color: theme.accent, width: 2, fill: 0.18 },
      ...familyIds("w.", ".tps").map((id, i) => ({ key: `w.${id}.tps`, label: `${id} decode`, color: pal(i + 1), width: 1 })),
    ],
    now: () => [["", fmtRate(lastValue("g.tps")), " tok/s"], ["  ", fmtRate(lastValue("g.rps")), " req/s"]],
  },
  streams: {
    fmt: fmtInt,
    series: () => [
      { key: "g.streams", label: "active streams", color: theme.palette[0], width: 2, fill: 0.15, step: true },
      { key: "g.conns", label: "connections", color: theme.palette[1], width: 1.5, step: true },
    ],
    now: () => [["", fmtInt(lastValue("g.streams")), " streams"], ["  ", fmtInt(lastValue("g.conns")), " connections"]],
  },
  ttft: {
    fmt: fmtMs,
    series: () => percentiles("g.ttft"),
    now: () => pctNow("g.ttft"),
  },
  itl: {
    fmt: fmtMs,
    series: () => percentiles("g.itl"),
    now: () => pctNow("g.itl"),
  },
  batch: {
    fmt: fmtInt,
    series: () => familyIds("w.", ".cap").flatMap((id, i) => [
      { key: `w.${id}.cap`, label: `${id} cap`, color: pal(i), width: 2, step: true },
      { key: `w.${id}.bound`, label: `${id} bound`, color: pal(i), width: 1, dash: [5, 4], step: true },
      { key: `w.${id}.active`, label: `${id} active`, color: alpha(pal(i), 0.8), width: 1, fill: 0.14, step: true },
    ]),
    now: () => familyIds("w.", ".cap").map((id, i) => [i ? "  " : "", `${fmtInt(lastValue(`w.${id}.active`))}/${fmtInt(lastValue(`w.${id}.cap`))}`, ` ${id}`]),
  },
  mem: {
    fmt: fmtPct, axis: (v) => v + "%",
    series: () => [
      { key: "m.ratio", label: "used of budget", color: theme.accent, width: 2, fill: 0.15 },
      { key: "m.psi_some", label: "PSI some avg10", color: theme.warn, width: 1.5 },
      { key: "m.psi_full", label: "PSI full avg10", color: theme.bad, width: 1.5 },
      { key: "m.level", label: "level", color: theme.worse, width: 1.5, dash: [2, 3], step: true, scale: "lvl", fmt: fmtLevel },
    ],
    now: () => [["", fmtPct(lastValue("m.ratio")), " of budget"], ["  PSI ", fmtPct(lastValue("m.psi_some")), ""]],
  },
  errors: {
    fmt: (v) => (v == null ? "–" : v.toFixed(v >= 10 || Number.isInteger(v) ? 0 : 1) + "/s"),
    series: () => {
      const codes = familyIds("err.", "");
      if (!codes.length) return [{ key: "g.errors", label: "all codes", color: theme.ok, width: 1.5, step: true }];
      return codes.map((c) => ({ key: `err.${c}`, label: c, color: codeColor(c), width: 1.5, fill: 0.12, step: true }));
    },
    now: () => [["", CHARTS.errors.fmt(lastValue("g.errors")), ""]],
  },
};

function pctNow(prefix) {
  return ["p50", "p95", "p99"].map((p, i) => [`${i ? "  " : ""}${p} `, fmtMs(lastValue(`${prefix}.${p}`, 5)), ""]);
}

let windowS = 300;
let latestT = null;
const charts = {};   // name -> { u (uPlot), sig (its series keys), keys, labels }
let bandLevels = []; // the pressure level of each point of the window (for the bands)

// The window of the store the charts show: [first index, end).
function windowRange() {
  const t = store.t;
  if (!t.length) return [0, 0];
  const from = t[t.length - 1] - windowS - 2 * store.interval;
  let i = t.length - 1;
  while (i > 0 && t[i - 1] >= from) i--;
  return [i, t.length];
}

// Memory pressure as a shaded background on every chart, so a latency spike
// can be read against the pressure it came with.
function drawBands(u) {
  const xs = u.data[0];
  if (!xs || !xs.length || !bandLevels.some((l) => l > 0)) return;
  const { ctx } = u;
  const { top, height } = u.bbox;
  const colors = [null, theme.warn, theme.bad, theme.worse];
  ctx.save();
  ctx.globalAlpha = 0.13;
  // One rectangle per run of a level (overlapping translucent strips would show seams);
  // a point stands for the interval that ended at its time.
  for (let i = 0; i < xs.length; ) {
    const lvl = bandLevels[i];
    let j = i + 1;
    while (j < xs.length && bandLevels[j] === lvl) j++;
    if (lvl > 0) {
      const x0 = u.valToPos(xs[i] - store.interval, "x", true);
      const x1 = u.valToPos(xs[j - 1], "x", true);
      ctx.fillStyle = colors[lvl] || theme.bad;
      ctx.fillRect(Math.min(x0, x1), top, Math.abs(x1 - x0), height);
    }
    i = j;
  }
  ctx.restore();
}

// The chosen window, ending at the latest snapshot; while there is less data
// than that (a page just opened), just the data there is (at least 30 s).
function xRange() {
  const hi = latestT ?? Date.now() / 1000;
  const lo = store.t.length ? store.t[0] : hi;
  return [hi - Math.min(windowS, Math.max(30, hi - lo)), hi];
}

function yRange(u, min, max) {
  if (!(max > 0)) return [0, 1];
  return [0, max * 1.15];
}

function makeChart(name, list) {
  const spec = CHARTS[name];
  const el = $("plot-" + name);
  const font = `11px ${getComputedStyle(document.body).fontFamily}`;
  const axis = (extra = {}) => ({
    stroke: theme.muted, font, size: 46, gap: 4,
    grid: { stroke: theme.grid, width: 1 }, ticks: { stroke: theme.grid, width: 1, size: 4 }, ...extra,
  });
  const hasLvl = list.some((s) => s.scale === "lvl");
  const yfmt = spec.axis || fmtTick;
  const opts = {
    width: Math.max(200, el.clientWidth), height: PLOT_HEIGHT,
    cursor: { sync: { key: "rill" }, drag: { x: false, y: false }, points: { size: 6 } },
    legend: { live: true },
    scales: {
      x: { time: true, range: xRange },
      y: { range: yRange },
      lvl: { range: [0, 3.3] },
    },
    axes: [
      axis({ size: 28, space: 70, values: (u, vals, ax, space, incr) => vals.map((v) => fmtClock(v, incr)) }),
      axis({ values: (u, vals) => vals.map((v) => yfmt(v)) }),
      ...(hasLvl ? [axis({ scale: "lvl", side: 1, size: 70, grid: { show: false },
                           splits: () => [0, 1, 2, 3], values: (u, vals) => vals.map((v) => LEVELS[v] ?? "") })] : []),
    ],
    series: [
      { value: (u, v, si, idx) => (idx == null ? "now" : new Date(v * 1000).toLocaleTimeString()) },
      ...list.map((s) => ({
        label: s.label,
        scale: s.scale || "y",
        stroke: s.color,
        width: s.width || 1.5,
        dash: s.dash,
        fill: s.fill ? alpha(s.color, s.fill) : undefined,
        spanGaps: !!s.gaps,
        paths: s.step ? uPlot.paths.stepped({ align: 1 }) : undefined,
        points: { show: s.gaps ? (u, si, i0, i1) => i1 - i0 < 120 : false, size: 4 },
        value: (u, v, si, idx) => (s.fmt || spec.fmt)(idx == null ? latestIn(u.data[si]) : v),
      })),
    ],
    hooks: { drawClear: [drawBands] },
  };
  return new uPlot(opts, dataFor(list, windowRange()), el);
}

function latestIn(a) {
  if (!a) return null;
  for (let i = a.length - 1; i >= 0 && i >= a.length - 5; i--) if (a[i] != null) return a[i];
  return null;
}

function dataFor(list, [a, b]) {
  return [store.t.slice(a, b), ...list.map((s) => (store.cols.get(s.key) || []).slice(a, b))];
}

function renderCharts() {
  if (!globalThis.uPlot) return;
  const range = windowRange();
  const lv = store.cols.get("m.level");
  bandLevels = lv ? lv.slice(range[0], range[1]) : [];
  for (const [name, spec] of Object.entries(CHARTS)) {
    const panel = $("panel-" + name);
    if (panel.hidden) {
      if (charts[name]) { charts[name].u.destroy(); delete charts[name]; }
      continue;
    }
    const list = spec.series();
    const sig = list.map((s) => s.key).join("|");
    const c = charts[name];
    if (c && c.sig === sig) c.u.setData(dataFor(list, range));
    else {
      if (c) c.u.destroy();
      charts[name] = { u: makeChart(name, list), sig, keys: list.map((s) => s.key), labels: list.map((s) => s.label) };
    }
    const now = $("now-" + name);
    now.replaceChildren(...spec.now().flatMap(([pre, val, post]) => [pre, h("b", { textContent: val }), post]));
  }
}

function rebuildCharts() {
  for (const name of Object.keys(charts)) { charts[name].u.destroy(); delete charts[name]; }
  readTheme();
  renderCharts();
}

const resizer = new ResizeObserver((entries) => {
  for (const e of entries) {
    const name = e.target.id.replace(/^plot-/, "");
    const c = charts[name];
    const w = Math.floor(e.contentRect.width);
    if (c && w > 0 && w !== c.u.width) c.u.setSize({ width: w, height: PLOT_HEIGHT });
  }
});
for (const name of Object.keys(CHARTS)) resizer.observe($("plot-" + name));

// --- the figures of the moment: tiles, header, workers ----------------------------

function setKpi(name, text, tone) {
  const el = $("kpi-" + name);
  el.textContent = text;
  el.parentElement.dataset.tone = tone || "";
}

function renderNow(s) {
  const g = s.gateway || {};
  const sup = s.supervisor;
  const workers = workersOf(s);
  setKpi("tps", fmtRate(num(g.tokens_per_s)));
  setKpi("rps", fmtRate(num(g.requests_per_s)));
  setKpi("streams", fmtInt(num(g.active_streams)));
  setKpi("conns", fmtInt(num(g.connections)));
  setKpi("ttft", fmtMs(lastValue("g.ttft.p95", 10)));
  setKpi("itl", fmtMs(lastValue("g.itl.p95", 10)));
  const errs = lastValue("g.errors") || 0;
  setKpi("errors", CHARTS.errors.fmt(errs), errs > 0 ? "bad" : "");
  const ready = num(g.workers_ready);
  // A worker the supervisor's scaling stopped ("off") is not missing.
  const total = workers.filter((w) => w.state !== "off").length;
  setKpi("workers", total ? `${fmtInt(ready)}/${total}` : fmtInt(ready),
         ready === 0 ? "bad" : total && ready < total ? "warn" : "");

  document.body.dataset.supervisor = sup ? "yes" : "no";
  for (const p of document.querySelectorAll("[data-needs=supervisor]")) p.hidden = !sup;
  const press = sup && sup.pressure;
  const level = press && LEVELS.includes(press.level) ? press.level : null;
  $("pressure").hidden = !level;
  $("pressure").dataset.level = level || "unknown";
  $("pressure-level").textContent = level || "–";
  $("pressure").title = press
    ? `Memory pressure: ${level}${press.reason ? ` (${press.reason})` : ""}; ` +
      `${fmtBytes(num(press.used_bytes))} of ${fmtBytes(num(press.budget_bytes))} budget`
    : "";
  document.body.dataset.pressure = level || "none";
  const memTile = document.querySelector("[data-kpi=mem]");
  memTile.hidden = !press;
  if (press)
    setKpi("mem", fmtPct(num(press.ratio) != null ? press.ratio * 100 : null),
           level === "critical" || level === "emergency" ? "bad" : level === "warning" ? "warn" : "");

  const totals = g.errors_total || {};
  $("errors-total").replaceChildren(...Object.keys(totals).sort().filter((c) => totals[c] > 0).map((c) =>
    h("span", { className: "chip", title: `${c}: ${totals[c]} since the gateway started` }, `${c} ${totals[c]}`)));

  renderWorkers(s, workers);
}

// Which table column shows which figures; a column nobody fills is hidden.
const COLUMNS = {
  id: () => true,
  state: (w) => w.state !== undefined,
  load: (w) => w.active !== undefined || w.queued !== undefined,
  batch: (w) => w.batch_cap !== undefined,
  step: (w) => w.step_p50_ms !== undefined,
  tps: (w) => w.tokens_per_s !== undefined,
  rss: (w) => w.rss_bytes !== undefined,
  kv: (w) => w.kv_bytes !== undefined,
  preempt: (w) => w.preemptions !== undefined,
  prefix: (w) => w.prefix_cache !== undefined,
  restarts: (w) => w.restarts !== undefined,
};

function bar(frac, warnAt = 0.75, badAt = 0.9) {
  const inner = h("span");
  const f = Math.max(0, Math.min(1, frac || 0));
  inner.style.width = (f * 100).toFixed(1) + "%"; // CSSOM, not a style attribute: CSP allows it
  return h("span", { className: "bar", dataset: { tone: f >= badAt ? "bad" : f >= warnAt ? "warn" : "" } }, inner);
}

// The prefix cache: tokens found cached / tokens looked up, since the worker started.
function prefixCell(pc) {
  if (!pc) return ["–"];
  const looked = num(pc.lookup_tokens), hit = num(pc.hit_tokens);
  return [h("span", { title: `${fmtInt(num(pc.hits))} of ${fmtInt(num(pc.lookups))} requests hit; ` +
                             `${fmtInt(hit)} of ${fmtInt(looked)} prompt tokens cached; ` +
                             `${fmtInt(num(pc.evictions))} blocks evicted` },
            looked ? fmtPct(hit / looked * 100) : "–"),
          h("span", { className: "muted" }, ` / ${fmtInt(num(pc.blocks))}`)];
}

function cells(w) {
  const n = (v) => num(v);
  const nz = (v) => h("span", { className: v > 0 ? "nonzero" : "" }, fmtInt(n(v)));
  return {
    id: [h("span", { className: "id" }, String(w.id)), w.pid ? h("span", { className: "muted small" }, ` pid ${w.pid}`) : null],
    state: [h("span", { className: "state", dataset: { state: w.state || "unknown" } }, w.state || "unknown"),
            w.last_exit ? h("span", { className: "exit", title: w.last_exit }, `last: ${w.last_exit}`) : null],
    load: [fmtInt(n(w.active)), h("span", { className: "muted" }, " / "),
           w.queued === undefined ? "–" : h("span", { className: w.queued > 0 ? "nonzero" : "" }, fmtInt(n(w.queued)))],
    batch: [`${fmtInt(n(w.batch_cap))} / ${fmtInt(n(w.batch_bound))}`,
            n(w.batch_bound) ? bar(n(w.batch_cap) / n(w.batch_bound), 2, 2) : null],
    step: [`${fmtMs(n(w.step_p50_ms)).replace(" ms", "")} / ${fmtMs(n(w.step_p99_ms))}`],
    tps: [fmtRate(n(w.tokens_per_s))],
    rss: [fmtBytes(n(w.rss_bytes))],
    kv: [`${fmtBytes(n(w.kv_bytes))} / ${fmtBytes(n(w.kv_capacity_bytes))}`,
         n(w.kv_capacity_bytes) ? bar(n(w.kv_bytes) / n(w.kv_capacity_bytes)) : null],
    preempt: [nz(w.preemptions)],
    prefix: prefixCell(w.prefix_cache),
    restarts: [nz(w.restarts)],
  };
}

const rowsById = new Map();

function renderWorkers(s, workers) {
  const body = $("workers-body");
  const list = [...workers].sort((a, b) => byId(a.id, b.id));
  const shown = Object.fromEntries(Object.entries(COLUMNS).map(([c, has]) => [c, list.some(has)]));
  for (const th of document.querySelectorAll("#workers th[data-col]")) th.hidden = !shown[th.dataset.col];
  const seen = new Set();
  for (const w of list) {
    const id = String(w.id);
    seen.add(id);
    let tr = rowsById.get(id);
    if (!tr) {
      tr = h("tr", { dataset: { worker: id } },
             ...Object.keys(COLUMNS).map((c) => h("td", { className: c === "id" || c === "state" ? "" : "num", dataset: { col: c } })));
      rowsById.set(id, tr);
    }
    tr.dataset.state = w.state || "unknown";
    const content = cells(w);
    for (const td of tr.children) {
      td.hidden = !shown[td.dataset.col];
      td.replaceChildren(...content[td.dataset.col].filter((x) => x != null));
    }
    body.append(tr); // in sorted order (append moves an existing row)
  }
  for (const [id, tr] of rowsById)
    if (!seen.has(id)) { tr.remove(); rowsById.delete(id); }

  const g = s.gateway || {};
  const empty = $("workers-empty");
  empty.hidden = list.length > 0;
  if (!list.length) {
    const ready = num(g.workers_ready);
    empty.textContent = s.supervisor
      ? "The supervisor runs no workers."
      : `${fmtInt(ready)} worker${ready === 1 ? "" : "s"} ready. Per-worker figures come from rill-supervisor, ` +
        "which is not running this gateway.";
  }
  const gws = s.supervisor ? (s.supervisor.processes || []).filter((p) => p.role === "gateway") : [];
  $("procs-note").replaceChildren(...gws.flatMap((p, i) => [
    i ? " · " : "", `gateway ${p.id} `, h("span", { className: "state", dataset: { state: p.state || "unknown" } }, p.state || "?"),
    p.restarts ? ` ${p.restarts} restart${p.restarts === 1 ? "" : "s"}` : "",
  ]));
  renderScaling(s.supervisor && s.supervisor.scaling);
}

// The supervisor's scaling: how many workers run within min..max, what it
// decided in all, and its last decision with the reason.
function renderScaling(sc) {
  const el = $("scaling");
  el.hidden = !sc;
  if (!sc) return;
  const ev = sc.events || {};
  const counts = `up: queue ${fmtInt(num(ev.queue) || 0)}, pressure relieved ${fmtInt(num(ev.pressure_relieved) || 0)}; ` +
                 `down: pressure ${fmtInt(num(ev.pressure) || 0)}, idle ${fmtInt(num(ev.idle) || 0)}`;
  const l = sc.last;
  el.replaceChildren(
    h("span", { className: "k" }, "Scaling "),
    h("strong", { id: "scaling-workers" }, `${fmtInt(num(sc.workers))} of ${fmtInt(num(sc.min))}–${fmtInt(num(sc.max))} workers`),
    h("span", { className: "muted", id: "scaling-events" }, ` · ${counts}`),
    l ? h("span", { id: "scaling-last", dataset: { direction: l.direction, reason: l.reason }, title: l.detail || "" },
          ` · last: ${l.direction} ${l.worker} (${l.reason}) ${fmtInt(num(l.ago_s))} s ago`) : "");
}

// --- the socket -------------------------------------------------------------------

const conn = { ws: null, attempt: 0, timer: null, lastMsgMs: 0, state: "", subscribes: 0 };
let snapshots = 0;
let lastSnapshotMs = 0;
let last = null;

function streamUrl() {
  // Absolute: the page is served at /dashboard.html and at /dashboard/ alike.
  const u = new URL("/stream", location.href);
  u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  u.search = "";
  const key = new URLSearchParams(location.search).get("key");
  if (key) u.searchParams.set("key", key);
  return u.toString();
}

function setConn(state, text) {
  conn.state = state;
  $("conn").dataset.state = state;
  $("conn-text").textContent = text;
}

function notice(text) {
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
}

function connect() {
  conn.timer = null;
  setConn("connecting", "Connecting…");
  let ws;
  try {
    ws = new WebSocket(streamUrl(), "rill.json.v1");
  } catch (e) {
    retry(String(e.message || e));
    return;
  }
  conn.ws = ws;
  ws.onopen = () => {
    conn.attempt = 0;
    conn.lastMsgMs = Date.now();
    const hello = { type: "hello", client: { name: "rill-dashboard" } };
    const key = new URLSearchParams(location.search).get("key");
    if (key) hello.key = key;
    ws.send(JSON.stringify(hello));
    ws.send(JSON.stringify({ type: "subscribe", telemetry: true }));
    conn.subscribes++;
    setConn("open", "Subscribed, waiting for data…");
  };
  ws.onmessage = (ev) => onMessage(ev.data);
  ws.onclose = (ev) => {
    if (conn.ws !== ws) return;
    conn.ws = null;
    retry(ev.reason || (ev.code === 1006 ? "connection lost" : `closed (${ev.code})`));
  };
}

function retry(why) {
  if (conn.timer) return;
  const cap = Math.min(5000, 250 * 2 ** conn.attempt++);
  const delay = Math.round(cap / 2 + (Math.random() * cap) / 2);
  setConn("waiting", `Offline (${why}), retrying…`);
  conn.timer = setTimeout(connect, delay);
}

function onMessage(data) {
  let m;
  try { m = JSON.parse(data); } catch { return; }
  conn.lastMsgMs = Date.now();
  if (m.type === "telemetry") ingest(m);
  else if (m.type === "error" && m.error) {
    // Not ours to show unless it is about us: the subscription itself.
    if (!snapshots || m.id == null)
      notice(`The gateway answered the telemetry subscription with ${m.error.code}: ${m.error.message || ""}`);
  }
}

function ingest(s) {
  const t = num(s.time_ms) != null ? s.time_ms / 1000 : Date.now() / 1000;
  store.interval = num(s.interval_s) || 1;
  // A hole (socket down, gateway restarted): a row of nulls breaks the lines.
  if (latestT != null && t - latestT > 2.5 * store.interval) appendRow(latestT + store.interval, {});
  if (latestT != null && t <= latestT - 60) { // the clock went back a lot: start over
    store.t.length = 0;
    store.cols.clear();
  }
  appendRow(t, rowOf(s));
  latestT = Math.max(latestT ?? t, t);
  last = s;
  lastSnapshotMs = Date.now();
  snapshots++;
  document.body.dataset.snapshots = String(snapshots);
  notice("");
  setConn("live", "Live");
  renderNow(s);
  renderCharts();
}

setInterval(() => {
  const quiet = Date.now() - conn.lastMsgMs;
  if (conn.ws && (conn.state === "live" || conn.state === "open" || conn.state === "stale") && quiet > STALE_MS) {
    setConn("stale", `No data for ${Math.round(quiet / 1000)} s`);
    if (quiet > DEAD_MS) conn.ws.close(4000, "no telemetry");
  }
  if (latestT != null) {
    const ago = (Date.now() - lastSnapshotMs) / 1000;
    $("last-update").textContent = `last snapshot ${new Date(latestT * 1000).toLocaleTimeString()}` +
      (ago >= 2 ? ` (${ago.toFixed(0)} s ago)` : "");
  }
}, 1000);

// --- controls, theme, start ------------------------------------------------------

for (const b of document.querySelectorAll(".windows button")) {
  b.addEventListener("click", () => {
    windowS = Number(b.dataset.window);
    for (const o of document.querySelectorAll(".windows button")) o.setAttribute("aria-pressed", String(o === b));
    renderCharts();
  });
}
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", rebuildCharts);

readTheme();
if (!globalThis.uPlot)
  notice("The chart library is missing (gateway/web/node_modules/uplot): run `make deps`. Figures still update below.");
connect();

globalThis.rillDashboard = {
  get snapshots() { return snapshots; },
  get subscribes() { return conn.subscribes; },
  get state() { return conn.state; },
  get last() { return last; },
  // Non-null values of a series in the store ("g.tps", "w.w0.cap", "err.overloaded", ...).
  points(key) { return (store.cols.get(key) || []).filter((v) => v != null).length; },
  values(key) { return [...(store.cols.get(key) || [])]; },
  keys() { return [...store.cols.keys()]; },
  // Per chart: its series labels and keys, and the points it draws.
  charts() {
    return Object.fromEntries(Object.entries(charts).map(([n, c]) => [n, {
      keys: c.keys, labels: c.labels,
      points: c.u.data.slice(1).map((a) => a.filter((v) => v != null).length),
      width: c.u.width,
    }]));
  },
};
