"""The telemetry dashboard (gateway/web/dashboard.html) in headless Chromium.

Main test: the whole pipeline under rill-supervisor (two workers), the page
open on the gateway, a few Python clients generating in a loop; the page must
receive the gateway's telemetry snapshots, chart them (uPlot) and show both
workers ready, with nothing blocked by the gateway's Content-Security-Policy.

Second test: the page against a scripted telemetry feed (a small Python
server that serves gateway/web with the gateway's headers and plays
docs/telemetry.md snapshots on /stream), for what a healthy pipeline rarely
shows: a failed worker, critical memory pressure, errors by code, a gateway
without a supervisor, and a socket that drops.

The browser is driven over the DevTools protocol with test_browser.py's
helpers; the page exposes what it received as globalThis.rillDashboard.

Last, deploy/grafana/rill.json: valid JSON and PromQL, and every metric it
queries is one the C sources export.
"""
import asyncio
import glob
import http
import json
import math
import mimetypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest
import websockets

from conftest import free_port, http_get
from test_browser import ARTIFACTS, Browser, Page
from conftest import Supervised

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WEB = os.path.join(ROOT, "gateway", "web")
UPLOT = os.path.join(WEB, "node_modules", "uplot", "dist", "uPlot.iife.min.js")

# What the gateway sends with every file (libwebsockets' security best
# practices), so the scripted server holds the page to the same rules.
GATEWAY_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; img-src 'self' data: ; script-src 'self'; font-src 'self'; "
                                "style-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'; "
                                "base-uri 'none';form-action 'self';"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "deny"),
    ("Referrer-Policy", "no-referrer"),
]


def gateway_has_telemetry():
    return any("subscribe" in open(f).read() for f in glob.glob(os.path.join(ROOT, "gateway", "*.c")))


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(UPLOT):
        pytest.fail(f"{UPLOT} is missing: run `make deps` (npm install in gateway/web)")
    b = Browser()
    yield b
    b.close()


def open_dashboard(browser, port):
    page = Page(browser, width=1400, height=1000)
    page.goto(f"http://127.0.0.1:{port}/dashboard.html")
    page.wait("document.getElementById('conn').dataset.state === 'live'", what="the dashboard's first snapshot")
    return page


class State:
    """Reads the page's view of things in one call."""

    JS = r"""(() => {
      const d = globalThis.rillDashboard;
      const rows = [...document.querySelectorAll('#workers-body tr')].map(tr => ({
        id: tr.dataset.worker, state: tr.dataset.state,
        cells: Object.fromEntries([...tr.children].filter(td => !td.hidden)
                                  .map(td => [td.dataset.col, td.textContent])) }));
      return { snapshots: d.snapshots, subscribes: d.subscribes, state: d.state, charts: d.charts(),
               rows, columns: [...document.querySelectorAll('#workers th')].filter(th => !th.hidden)
                                                                          .map(th => th.dataset.col),
               pressure: document.body.dataset.pressure,
               pressureBadge: !document.getElementById('pressure').hidden
                              && document.getElementById('pressure-level').textContent,
               hiddenPanels: [...document.querySelectorAll('.panel[id]')].filter(p => p.hidden).map(p => p.id),
               kpi: Object.fromEntries([...document.querySelectorAll('.kpi')].filter(k => !k.hidden)
                                       .map(k => [k.dataset.kpi, k.querySelector('.v').textContent])),
               errorsTotal: document.getElementById('errors-total').textContent,
               empty: !document.getElementById('workers-empty').hidden
                      && document.getElementById('workers-empty').textContent,
               notice: !document.getElementById('notice').hidden && document.getElementById('notice').textContent,
               uplots: document.querySelectorAll('.uplot canvas').length };
    })()"""

    @staticmethod
    def read(page):
        return page.js(State.JS)


# --- the real pipeline ---------------------------------------------------------------

class Load:
    """A few WebSocket clients generating one request after another, in a thread."""

    def __init__(self, url, clients=4, max_tokens=48):
        self.url, self.clients, self.max_tokens = url, clients, max_tokens
        self.stop = threading.Event()
        self.completed = 0
        self.errors = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()

    async def _client(self, k):
        async with websockets.connect(self.url, compression=None) as ws:
            n = 0
            while not self.stop.is_set():
                n += 1
                await ws.send(json.dumps({"type": "generate", "id": f"c{k}-{n}", "prompt": "Once upon a time",
                                          "max_tokens": self.max_tokens, "params": {"temperature": 0.8}}))
                while True:
                    m = json.loads(await ws.recv())
                    if m["type"] == "complete":
                        self.completed += 1
                        break
                    if m["type"] == "error":
                        self.errors.append(m["error"])
                        break

    async def _main(self):
        try:
            await asyncio.gather(*(self._client(k) for k in range(self.clients)))
        except Exception as e:  # the test reads this; a dead load thread must not pass silently
            self.errors.append(repr(e))

    def finish(self):
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.mark.skipif(not gateway_has_telemetry(),
                    reason="the gateway has no telemetry stream yet (no `subscribe` in gateway/*.c)")
def test_dashboard_charts_a_loaded_pipeline_under_the_supervisor(browser, tiny_model):
    s = Supervised(tiny_model, workers=2)
    load = None
    page = None
    try:
        s.wait_ready()
        status, _, headers = http_get(s.port, "/dashboard.html")
        assert status == 200 and "script-src 'self'" in headers.get("content-security-policy", "")
        assert http_get(s.port, "/node_modules/uplot/dist/uPlot.iife.min.js")[0] == 200
        page = open_dashboard(browser, s.port)
        t0 = time.monotonic()
        load = Load(s.url, clients=4)
        page.wait("globalThis.rillDashboard.values('g.tps').some(v => v > 0)", timeout=15,
                  what="tokens/s > 0 on the dashboard")
        page.wait("[...document.querySelectorAll('#workers-body tr')].filter(tr => tr.dataset.state === 'ready')"
                  ".length === 2", timeout=10, what="both workers ready in the table")
        # About four seconds of charts under load.
        time.sleep(max(0.0, 4.0 - (time.monotonic() - t0)))
        st = State.read(page)

        assert st["state"] == "live" and st["snapshots"] >= 4, st
        assert st["notice"] is False, st["notice"]
        assert st["uplots"] >= 7 and not st["hiddenPanels"], st  # every chart drawn, none hidden
        ch = st["charts"]
        assert ch["tps"]["points"][0] >= 4
        assert max(page.js("globalThis.rillDashboard.values('g.tps')")) > 0
        assert ch["ttft"]["points"][0] >= 1 and ch["itl"]["points"][0] >= 1
        assert ch["streams"]["points"][0] >= 4
        # The workers' own figures, from the supervisor: decode rates, caps, bounds.
        assert {"w.w0.tps", "w.w1.tps"} <= set(ch["tps"]["keys"])
        assert {"w.w0.cap", "w.w0.bound", "w.w1.cap", "w.w1.active"} <= set(ch["batch"]["keys"])
        assert max(v or 0 for v in page.js("globalThis.rillDashboard.values('w.w0.cap')")) > 0
        assert ch["mem"]["points"][0] >= 4  # ratio of budget
        assert [r["id"] for r in st["rows"]] == ["w0", "w1"]
        assert all(r["state"] == "ready" for r in st["rows"])
        assert st["columns"] == ["id", "state", "load", "batch", "step", "tps", "rss", "kv", "preempt", "prefix",
                                 "restarts"]
        assert all(r["cells"]["rss"].endswith("MiB") for r in st["rows"]), st["rows"]
        assert st["pressureBadge"] in ("normal", "warning", "critical", "emergency")
        assert st["kpi"]["workers"] == "2/2"
        page.hover("h1")  # the pointer off the charts for the picture
        page.screenshot(os.path.join(ARTIFACTS, "dashboard.png"))
        load.finish()
        assert load.completed > 0 and not load.errors, load.errors[:3]
        browser.pump(0.1)
        assert page.errors() == []
        # The short address too (the gateway's /dashboard mount redirects to /dashboard/).
        page.goto(f"http://127.0.0.1:{s.port}/dashboard")
        page.wait("document.getElementById('conn').dataset.state === 'live'", what="the dashboard at /dashboard")
        page.wait("document.querySelectorAll('#workers-body tr').length === 2", timeout=5)
        browser.pump(0.1)
        assert page.errors() == []
    except Exception:
        if page:
            page.screenshot(os.path.join(ARTIFACTS, "dashboard-failure.png"))
        raise
    finally:
        if load:
            load.finish()
        s.stop(signal.SIGINT)
        for pid in s.pids("rill-worker") + s.pids("rill-gateway"):
            os.kill(pid, signal.SIGKILL)
        s.log.close()
        os.unlink(s.log_path)


def test_dashboard_on_a_standalone_gateway_shows_what_the_gateway_knows(browser, pipelines, tiny_model):
    if not gateway_has_telemetry():
        pytest.skip("the gateway has no telemetry stream yet")
    p = pipelines(tiny_model, workers=1)
    page = open_dashboard(browser, p.port)
    asyncio.run(one_generation(p.url))
    page.wait("globalThis.rillDashboard.values('g.tps').some(v => v > 0)", timeout=5, what="tokens/s > 0")
    st = State.read(page)
    # No supervisor: no pressure, no batch or memory charts, no per-worker rows.
    assert "supervisor" not in page.js("globalThis.rillDashboard.last")
    assert sorted(st["hiddenPanels"]) == ["panel-batch", "panel-mem"] and st["pressureBadge"] is False
    assert st["rows"] == [] and st["empty"].startswith("1 worker ready.")
    assert st["kpi"]["workers"] == "1"
    assert set(st["charts"]) == {"tps", "streams", "ttft", "itl", "errors"}
    browser.pump(0.1)
    assert page.errors() == []


async def one_generation(url, n=32):
    async with websockets.connect(url, compression=None) as ws:
        await ws.send(json.dumps({"type": "generate", "prompt": "hi", "max_tokens": n, "params": {"temperature": 0}}))
        while json.loads(await ws.recv())["type"] not in ("complete", "error"):
            pass


# --- a scripted feed -----------------------------------------------------------------

def snapshot(k, t_ms, supervisor=True):
    """The k-th snapshot of a story: load rises, w1 dies and is given up,
    memory pressure climbs to critical, overload errors follow."""
    tps = 600 + 250 * math.sin(k / 3)
    s = {"type": "telemetry", "time_ms": t_ms, "interval_s": 1.0,
         "gateway": {"tokens_per_s": round(tps, 1), "requests_per_s": 4.0, "completed_per_s": 3.0,
                     "frames_per_s": tps * 0.8, "bytes_out_per_s": tps * 110, "active_streams": 8 + k % 5,
                     "connections": 6,
                     # Every third interval starts no generation: no TTFT samples then.
                     "ttft_ms": ({"p50": 40.0 + k, "p95": 80.0 + k, "p99": 120.0 + 2 * k, "count": 4} if k % 3
                                 else {"p50": 0, "p95": 0, "p99": 0, "count": 0}),
                     "inter_token_ms": {"p50": 12.0, "p95": 20.0 + k % 4, "p99": 31.0, "count": int(tps)},
                     "delivery_ms": {"p50": 0.08, "p95": 0.2, "p99": 0.9, "count": int(tps)},
                     "errors_per_s": {}, "errors_total": {"bad_request": 1},
                     "workers_ready": 1 if k >= 4 else 2}}
    g = s["gateway"]
    if k == 3:
        g["errors_per_s"]["worker_lost"] = 2.0
    if k >= 3:
        g["errors_total"]["worker_lost"] = 2
    if k >= 8:
        g["errors_per_s"]["overloaded"] = 3.0
        g["errors_total"]["overloaded"] = 3 * (k - 7)
    if not supervisor:
        return s
    level = "normal" if k < 5 else "warning" if k < 9 else "critical"
    ratio = min(0.97, 0.6 + 0.03 * k)
    w1_state = "ready" if k < 3 else "backoff" if k < 5 else "failed"
    s["supervisor"] = {
        "pressure": {"level": level, "reason": "ratio 0.93 >= 0.90" if level == "critical" else "",
                     "budget_bytes": 2 << 30, "used_bytes": int(ratio * (2 << 30)), "ratio": ratio,
                     "psi_some_avg10": 0.0 if k < 5 else 4.5 + k, "psi_full_avg10": 0.0 if k < 9 else 1.5},
        "scaling": {"workers": 2, "min": 1, "max": 3,
                    "events": {"queue": 1, "pressure_relieved": 0, "pressure": 0, "idle": 0},
                    "last": {"direction": "up", "reason": "queue", "worker": "w1",
                             "detail": "4.0 requests waiting per ready worker for 3.0 s", "ago_s": 2.0 + k}},
        "processes": [
            {"id": "g0", "role": "gateway", "state": "ready", "pid": 100, "restarts": 0, "last_exit": ""},
            {"id": "w0", "role": "worker", "state": "ready", "pid": 101, "restarts": 0, "last_exit": "",
             "active": 8, "queued": 2 if k >= 8 else 0, "batch_cap": 32 if k < 9 else 8, "batch_bound": 64 if k < 9 else 16,
             "step_p50_ms": 18.2, "step_p99_ms": 25.0, "tokens_per_s": round(tps, 1), "rss_bytes": 123456789,
             "kv_bytes": int(ratio * (64 << 20)), "kv_capacity_bytes": 64 << 20, "preemptions": 2 if k >= 9 else 0,
             "tokens_total": 1000 * k},
            {"id": "w1", "role": "worker", "state": w1_state, "pid": 0 if k >= 3 else 102, "restarts": min(k, 5),
             "last_exit": "" if k < 3 else "killed by signal 9 (Killed); 5 restarts within 60 s: giving up",
             "active": 0, "queued": 0, "batch_cap": 0, "batch_bound": 64, "step_p50_ms": 0, "step_p99_ms": 0,
             "tokens_per_s": 0.0, "rss_bytes": 0, "kv_bytes": 0, "kv_capacity_bytes": 64 << 20,
             "preemptions": 0, "tokens_total": 0},
        ],
    }
    return s


class FakeGateway:
    """Serves gateway/web over HTTP (with the gateway's security headers) and
    plays snapshots to telemetry subscribers on /stream.  Snapshot time moves
    one second per snapshot while the wall clock moves `period` seconds, so a
    test sees minutes of charts in a few seconds."""

    def __init__(self, supervisor=True, period=0.2, drop_after=None):
        self.supervisor, self.period, self.drop_after = supervisor, period, drop_after
        self.port = free_port()
        self.received = []
        self.k = 0
        self.t_ms = int(time.time() * 1000) - 60_000
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, started):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(websockets.serve(
            self._ws, "127.0.0.1", self.port, process_request=self._http, subprotocols=["rill.json.v1"]))
        started.set()
        self.loop.run_forever()

    async def _http(self, path, headers):
        path = path.split("?", 1)[0]
        if path == "/stream":
            return None  # the WebSocket handshake goes on
        rel = os.path.normpath(path.lstrip("/") or "index.html")
        full = os.path.join(WEB, rel)
        if rel.startswith("..") or not os.path.isfile(full):
            return http.HTTPStatus.NOT_FOUND, [("Content-Type", "text/plain")], b"not found\n"
        ctype = mimetypes.guess_type(full)[0] or "application/octet-stream"
        with open(full, "rb") as f:
            return http.HTTPStatus.OK, [("Content-Type", ctype), *GATEWAY_HEADERS], f.read()

    async def _ws(self, ws, path=None):
        sent = 0
        subscribed = False
        while True:
            try:
                msg = await asyncio.wait_for(ws.recv(), timeout=0 if subscribed else 5)
                self.received.append(json.loads(msg))
                m = self.received[-1]
                if m.get("type") == "subscribe":
                    subscribed = bool(m.get("telemetry"))
            except asyncio.TimeoutError:
                pass
            except websockets.ConnectionClosed:
                return
            if not subscribed:
                continue
            await ws.send(json.dumps(snapshot(self.k, self.t_ms, self.supervisor)))
            self.k += 1
            self.t_ms += 1000
            sent += 1
            if self.drop_after and sent == self.drop_after:
                # An abrupt drop (as when the gateway dies): no close handshake.
                ws.transport.abort()
                self.drop_after = None
                self.t_ms += 10_000  # and ten seconds pass before it is back
                return
            await asyncio.sleep(self.period)

    def subscriptions(self):
        return [m for m in self.received if m.get("type") == "subscribe"]

    def close(self):
        async def stop():
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@pytest.fixture
def fake_gateway():
    made = []

    def make(**kw):
        f = FakeGateway(**kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def test_dashboard_shows_a_failed_worker_critical_pressure_and_errors_from_a_scripted_feed(browser, fake_gateway):
    fake = fake_gateway(supervisor=True)
    page = open_dashboard(browser, fake.port)
    try:
        page.wait("globalThis.rillDashboard.snapshots >= 14", timeout=15, what="14 snapshots")
        st = State.read(page)
        assert fake.subscriptions() == [{"type": "subscribe", "telemetry": True}]
        assert fake.received[0] == {"type": "hello", "client": {"name": "rill-dashboard"}}

        # The header and the tiles.
        assert st["pressure"] == "critical" and st["pressureBadge"] == "critical"
        assert st["kpi"]["workers"] == "1/2"
        assert st["kpi"]["errors"] == "3/s"
        assert st["kpi"]["mem"].endswith("%")
        assert "overloaded" in st["errorsTotal"] and "worker_lost 2" in st["errorsTotal"]

        # The table: w0 ready with its figures, w1 failed with why.
        rows = {r["id"]: r for r in st["rows"]}
        assert list(rows) == ["w0", "w1"]
        assert rows["w0"]["state"] == "ready" and rows["w1"]["state"] == "failed"
        assert "giving up" in rows["w1"]["cells"]["state"]
        # The supervisor's scaling: workers within min..max, its decisions, the last one.
        assert page.js("document.getElementById('scaling-workers').textContent") == "2 of 1–3 workers"
        assert page.js("document.getElementById('scaling-events').textContent") == \
            " · up: queue 1, pressure relieved 0; down: pressure 0, idle 0"
        assert page.js("document.getElementById('scaling-last').textContent").startswith(" · last: up w1 (queue) ")
        assert page.js("document.getElementById('scaling-last').title") == \
            "4.0 requests waiting per ready worker for 3.0 s"
        assert rows["w0"]["cells"]["batch"] == "8 / 16"
        assert rows["w0"]["cells"]["load"] == "8 / 2"
        assert rows["w0"]["cells"]["step"] == "18.2 / 25.0 ms"
        assert rows["w0"]["cells"]["rss"] == "118 MiB"
        assert rows["w0"]["cells"]["preempt"] == "2" and rows["w1"]["cells"]["restarts"] == "5"
        assert page.js("getComputedStyle(document.querySelector('tr[data-worker=w1] .state')).backgroundColor") \
            != page.js("getComputedStyle(document.querySelector('tr[data-worker=w0] .state')).backgroundColor")

        # The charts got every snapshot; TTFT has gaps where no request started.
        ch = st["charts"]
        n = st["snapshots"]
        assert set(ch) == {"tps", "streams", "ttft", "itl", "batch", "mem", "errors"}
        assert ch["tps"]["points"][0] == n and ch["tps"]["labels"][:2] == ["delivered (all)", "w0 decode"]
        assert 0 < ch["ttft"]["points"][0] < n
        assert ch["itl"]["points"] == [n, n, n]
        assert ch["batch"]["labels"] == ["w0 cap", "w0 bound", "w0 active", "w1 cap", "w1 bound", "w1 active"]
        assert ch["mem"]["labels"] == ["used of budget", "PSI some avg10", "PSI full avg10", "level"]
        assert max(page.js("globalThis.rillDashboard.values('m.level')")) == 2  # critical
        assert set(ch["errors"]["labels"]) == {"bad_request", "overloaded", "worker_lost"}
        assert page.js("globalThis.rillDashboard.values('err.overloaded').slice(-1)[0]") == 3
        assert all(c["width"] > 300 for c in ch.values())

        # With the pointer away, the legends read the latest values.
        legend = page.js("[...document.querySelectorAll('#plot-tps .u-legend .u-value')].map(e => e.textContent)")
        assert legend[0] == "now" and legend[1] == st["kpi"]["tps"], legend

        # A narrower window shows fewer points (one a second of snapshot time).
        page.click("button[data-window='60']")
        page.wait("globalThis.rillDashboard.charts().tps.points[0] <= 63", timeout=5)
        page.hover("h1")
        page.screenshot(os.path.join(ARTIFACTS, "dashboard-synthetic.png"))
        # Dark mode: the charts are redrawn in the dark palette.
        page.call("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        page.wait("getComputedStyle(document.body).backgroundColor === 'rgb(14, 16, 19)'", timeout=5)
        page.wait("globalThis.rillDashboard.snapshots >= %d" % (n + 2), timeout=5)
        assert len(page.js("globalThis.rillDashboard.charts()")) == 7
        page.screenshot(os.path.join(ARTIFACTS, "dashboard-synthetic-dark.png"))
        browser.pump(0.1)
        assert page.errors() == []
    except Exception:
        page.screenshot(os.path.join(ARTIFACTS, "dashboard-synthetic-failure.png"))
        raise


def test_dashboard_without_supervisor_hides_what_it_cannot_know_and_reconnects(browser, fake_gateway):
    fake = fake_gateway(supervisor=False, drop_after=4)
    page = open_dashboard(browser, fake.port)
    page.wait("document.getElementById('conn').dataset.state === 'waiting'", timeout=10, what="the drop noticed")
    page.wait("globalThis.rillDashboard.snapshots >= 8 && globalThis.rillDashboard.state === 'live'", timeout=15,
              what="snapshots after the reconnect")
    st = State.read(page)
    assert st["subscribes"] == 2 and len(fake.subscriptions()) == 2
    assert sorted(st["hiddenPanels"]) == ["panel-batch", "panel-mem"]
    assert st["pressure"] == "none" and st["pressureBadge"] is False
    assert "mem" not in st["kpi"] and st["kpi"]["workers"] in ("1", "2")
    assert st["rows"] == [] and "Per-worker figures come from rill-supervisor" in st["empty"]
    assert page.js("document.getElementById('scaling').hidden") is True
    assert set(st["charts"]) == {"tps", "streams", "ttft", "itl", "errors"}
    # The ten seconds without data are a hole in the lines, not a straight join.
    tps = page.js("globalThis.rillDashboard.values('g.tps')")
    assert len(tps) == st["snapshots"] + 1 and tps.count(None) == 1 and tps[0] is not None
    browser.pump(0.1)
    assert page.errors() == []


# --- the Grafana dashboard ---------------------------------------------------------

GRAFANA = os.path.join(ROOT, "deploy", "grafana", "rill.json")


def metric_names_in_sources():
    """Every "rill_..." string literal in the C sources: the names /metrics can show."""
    names = set()
    for part in ("gateway", "supervisor", "common", "worker"):
        for path in glob.glob(os.path.join(ROOT, part, "*.c")):
            names.update(re.findall(r'"(rill_[a-z0-9_]+)', open(path).read()))
    return names


def test_grafana_dashboard_queries_only_metrics_that_exist():
    d = json.load(open(GRAFANA))
    assert d["schemaVersion"] >= 36 and d["uid"] and d["title"]
    ds = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert len(ds) == 1 and ds[0]["query"] == "prometheus"
    exprs = [(p["title"], t["expr"]) for p in d["panels"] for t in p.get("targets", [])]
    exprs += [(v["name"], v["definition"]) for v in d["templating"]["list"] if v["type"] == "query"]
    assert len(exprs) >= 30
    for p in d["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    known = metric_names_in_sources()
    assert "rill_gateway_tokens_total" in known and "rill_worker_batch_cap" in known

    def exists(name):
        if name in known:
            return True
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        return base != name and base in known  # a histogram's series

    unknown = sorted({(t, n) for t, e in exprs for n in re.findall(r"rill_[a-z0-9_]+", e) if not exists(n)})
    assert unknown == []
    # What the brief asked for is there.
    joined = "\n".join(e for _, e in exprs)
    for want in ("rate(rill_gateway_tokens_total", "rill_gateway_time_to_first_token_seconds_bucket",
                 "rill_gateway_inter_token_seconds_bucket", "rill_gateway_active_streams", "rill_gateway_connections",
                 "rill_gateway_errors_total", "rill_worker_step_seconds", "rill_worker_batch_cap",
                 "rill_worker_batch_bound", "rill_worker_kv_cache_bytes", "rill_worker_rss_bytes",
                 "rill_worker_preemptions_total", "rill_memory_pressure_level", "rill_memory_used_bytes",
                 "rill_memory_budget_bytes", "rill_process_restarts_total"):
        assert want in joined, want
    # Every expression is valid PromQL (promtool, from Debian's prometheus package, when installed).
    if shutil.which("promtool"):
        rules = {"groups": [{"name": "grafana", "rules": [
            {"record": f"rill:check_{i}", "expr": e.replace("$__rate_interval", "1m").replace("$instance", ".*")}
            for i, (_, e) in enumerate(exprs) if not e.startswith("label_values(")]}]}  # Grafana's, not PromQL
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
            json.dump(rules, f)  # JSON is YAML
            f.flush()
            r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
