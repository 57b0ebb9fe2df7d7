"""The gateway's page in a real browser: headless Chromium driven over the
Chrome DevTools Protocol (--remote-debugging-pipe: JSON messages ended by NUL
on fds 3 and 4, so no port to find and no extra Python package).

The page is used as a person would: text typed with Input.insertText, the
button clicked with mouse events at its position; what it shows is read
from the DOM.  Every test also checks that the page logged no errors (a CSP
violation shows up there).
"""
import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import wait_for, worker_stream

CHROMIUM = "/usr/bin/chromium"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ARTIFACTS = os.path.join(ROOT, "test-artifacts")


class CDPError(Exception):
    pass


class Browser:
    """Headless Chromium and one CDP connection to it, used synchronously."""

    def __init__(self):
        if not os.path.exists(CHROMIUM):
            pytest.fail(f"{CHROMIUM} is not installed: run `make deps` (it installs chromium and chromium-driver)")
        self.profile = tempfile.mkdtemp(prefix="rill-chromium-")
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        # CDP wants its pipes at fds 3 (read) and 4 (write) of the child;
        # copies above 10 first so the dup2s cannot overwrite each other.
        hi_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
        hi_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)

        def child_fds():
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--force-device-scale-factor=1",
                f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"]
        self.log = open(os.path.join(self.profile, "chromium.log"), "w+")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=child_fds, pass_fds=(3, 4))
        for fd in (to_chrome_r, from_chrome_w, hi_r, hi_w):
            os.close(fd)
        self.buf = b""
        self.next_id = 0
        self.events = []

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.to_chrome)
        os.close(self.from_chrome)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read_message(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self.from_chrome], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.from_chrome, 1 << 20)
            if not chunk:
                self.log.seek(0)
                raise CDPError(f"chromium exited (status {self.proc.poll()}):\n{self.log.read()[-3000:]}")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=None, timeout=30):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise CDPError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def pump(self, seconds):
        """Collect events for a while (when nothing else is asked)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read_message(deadline))
        except TimeoutError:
            pass


class Page:
    def __init__(self, browser, width=1100, height=1000):
        self.b = browser
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def call(self, method, params=None, timeout=30):
        return self.b.call(method, params, session=self.session, timeout=timeout)

    def goto(self, url):
        self.call("Page.navigate", {"url": url})
        self.wait("document.readyState === 'complete'", what="page load")

    def js(self, expr):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise CDPError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expr, timeout=30.0, what=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(expr):
                return
            time.sleep(0.05)
        raise TimeoutError(f"timed out waiting for {what or expr}")

    def center(self, selector):
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                      f" e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();"
                      f" return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        return box

    def click(self, selector):
        x, y = self.center(selector)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent",
                      {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def hover(self, selector):
        x, y = self.center(selector)
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})

    def type_into(self, selector, text):
        """Focus a field, clear it, and type: the page sees real input events."""
        self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.focus(); e.select?.();"
                f" e.value = ''; }})()")
        self.call("Input.insertText", {"text": text})

    def text(self, selector):
        return self.js(f"document.querySelector({json.dumps(selector)}).textContent")

    def screenshot(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        png = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(png))

    def errors(self):
        """What the page logged as errors (CSP violations, exceptions, failed loads)."""
        out = []
        for e in self.b.events:
            if e.get("sessionId") != self.session:
                continue
            p = e.get("params", {})
            if e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"{p['entry'].get('source')}: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif e["method"] == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('exception', {}).get('description')}")
            elif e["method"] == "Runtime.consoleAPICalled" and p["type"] == "error":
                out.append(f"console.error: {[a.get('value') for a in p['args']]}")
        return out


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


def open_page(browser, pipeline):
    page = Page(browser)
    page.goto(f"http://127.0.0.1:{pipeline.port}/")
    page.wait("document.getElementById('conn').dataset.state === 'open'", what="the page's WebSocket to connect")
    return page


def test_page_streams_the_same_text_as_the_worker_with_latencies_and_summary(browser, pipelines, small_model):
    prompt = "Once upon a time"
    expected = "".join(t["text"] for t in worker_stream(small_model, prompt, 24, "--temperature", "0"))
    pipeline = pipelines(small_model)
    page = open_page(browser, pipeline)
    try:
        page.type_into("#prompt", prompt)
        page.type_into("#temperature", "0")
        page.type_into("#max_tokens", "24")
        page.click("#generate")
        page.wait("document.body.dataset.state === 'done'", what="the generation to finish")

        assert page.text("#error") == "" and page.js("document.getElementById('error').hidden")
        assert page.text("#output") == expected
        # Every token is its own element, with its latency in its tooltip.
        titles = page.js("[...document.querySelectorAll('#output .tok')].map(s => s.title)")
        assert len(titles) == 24
        assert all(re.match(r"^\d+(\.\d+)? ms · position \d+ · token \d+", t) for t in titles), titles[:3]
        # The live readout: last token's latency, time to first token, rate.
        assert page.text("#live-tokens") == "24"
        assert re.fullmatch(r"\d+(\.\d+)? ms", page.text("#live-last"))
        assert re.fullmatch(r"\d+(\.\d+)? ms", page.text("#live-ttft"))
        assert re.fullmatch(r"\d+\.\d", page.text("#live-tps"))
        assert page.text("#live-worker") == "w0"
        # The summary, as the complete frame gave it.
        assert not page.js("document.getElementById('summary').hidden")
        summary = page.js("Object.fromEntries([...document.querySelectorAll('#summary-list > div')]"
                          ".map(d => [d.dataset.key, d.querySelector('dd').textContent]))")
        assert summary["finish_reason"] == "length"
        assert summary["total_tokens"] == "24"
        assert re.fullmatch(r"\d+(\.\d+)? ms", summary["p95_token_latency_ms"])
        # Hovering a token says what it cost.
        page.hover("#output .tok:nth-child(3)")
        page.wait("document.getElementById('tokinfo').textContent.startsWith('Token 3 of 24')", timeout=5)
        assert re.search(r"\d+(\.\d+)? ms", page.text("#tokinfo"))
        page.hover("#live")  # move the pointer out of the way before the picture
        page.screenshot(os.path.join(ARTIFACTS, "browser.png"))
        browser.pump(0.1)
        assert page.errors() == []
    except Exception:
        page.screenshot(os.path.join(ARTIFACTS, "browser-failure.png"))
        raise


def test_page_cancels_and_shows_errors(browser, pipelines, small_model):
    pipeline = pipelines(small_model, gateway_args=("--max_tokens_limit", "2000"))
    page = open_page(browser, pipeline)
    # The hello's limit reaches the form.
    page.wait("document.getElementById('max_tokens').max === '2000'", timeout=5, what="the hello's max_tokens_limit")
    page.type_into("#prompt", "The quick brown fox")
    page.type_into("#max_tokens", "2000")
    page.click("#generate")
    page.wait("document.querySelectorAll('#output .tok').length >= 3", what="the first tokens")
    page.click("#cancel")
    page.wait("document.body.dataset.state === 'done'", what="the cancelled generation to end")
    assert page.js("document.querySelector('#summary-list [data-key=finish_reason] dd').textContent") == "cancelled"
    assert int(page.text("#live-tokens")) < 2000

    # A request the gateway refuses: its error code and message are shown.
    page.js("document.getElementById('max_tokens').max = '100000'")
    page.type_into("#max_tokens", "5000")
    page.click("#generate")
    page.wait("!document.getElementById('error').hidden", what="the error to show")
    err = page.text("#error")
    assert err.startswith("max_tokens_exceeded: ") and "2000" in err, err
    assert page.js("document.body.dataset.state") == "done"
    assert page.errors() == []


def test_page_reconnects_when_the_gateway_comes_back(browser, pipelines, small_model):
    pipeline = pipelines(small_model)
    page = open_page(browser, pipeline)
    page.type_into("#prompt", "It was a dark and stormy night")
    page.type_into("#max_tokens", "2000")
    page.click("#generate")
    page.wait("document.querySelectorAll('#output .tok').length >= 3", what="the first tokens")
    # The host goes down mid-stream, the worker with it.
    argv = pipeline.gateway.args
    for p in (pipeline.gateway, pipeline.worker_procs[0]):
        p.kill()
        p.wait()
    # The page says it is reconnecting, and the answer stays open for the
    # resume (a gateway that merely dropped the connection would go on).
    page.wait("document.getElementById('conn').dataset.state === 'waiting'"
              " && document.getElementById('conn-text').textContent === 'Reconnecting…'", what="the page to notice")
    assert page.js("document.body.dataset.state") == "running"
    # It comes back: the page reconnects by itself.  A new gateway does not
    # know the old one's generations, so the resume is refused, plainly.
    pipeline.restart_worker(0)
    pipeline.gateway = pipeline._spawn("gateway", argv)
    wait_for(lambda: pipeline._ready(1), what="the gateway and worker to come back")
    page.wait("document.getElementById('conn').dataset.state === 'open'", timeout=30, what="the page to reconnect")
    page.wait("document.body.dataset.state === 'done'", what="the resume to be answered")
    assert page.text("#error").startswith("resume_failed: ")
    assert page.text("#conn-text") == "Connected"
    page.type_into("#max_tokens", "5")
    page.click("#generate")
    page.wait("document.body.dataset.state === 'done' && !document.getElementById('summary').hidden",
              what="a generation after the reconnect")
    assert page.text("#live-tokens") == "5"
    assert page.js("document.getElementById('error').hidden")
    # The browser logs each reconnect attempt that found the gateway down
    # (how many depends on timing); nothing else may be logged.
    refused = "failed: Error in connection establishment: net::ERR_CONNECTION_REFUSED"
    assert [e for e in page.errors() if refused not in e] == []


# The client against a scripted socket: what the gateway sends only now and
# then (a coalesced "tokens" frame, an error, a drop) arrives on cue.
CLIENT_SCRIPT = r"""
(async () => {
  const { RillClient } = await import("/rill-client.js");
  const sockets = [];
  class FakeSocket {
    static OPEN = 1;
    constructor(url, proto) { this.url = url; this.proto = proto; this.sent = []; this.readyState = 0;
                              sockets.push(this); setTimeout(() => { this.readyState = 1; this.onopen(); }); }
    send(s) { this.sent.push(JSON.parse(s)); }
    close() { this.readyState = 3; this.onclose({ code: 1000, reason: "" }); }
    frame(m) { this.onmessage({ data: JSON.stringify(m) }); }
  }
  const real = globalThis.WebSocket;
  globalThis.WebSocket = FakeSocket;
  try {
    const c = new RillClient("ws://example.invalid/stream", { key: "k1", minDelayMs: 10, maxDelayMs: 20 });
    const states = [];
    c.addEventListener("status", (e) => states.push(e.detail.state));
    const g = c.generate("hi", { max_tokens: 3, params: { temperature: 0 }, id: "a" });
    const seen = [];
    g.addEventListener("token", (e) => seen.push(e.detail.position));
    await new Promise((r) => setTimeout(r, 20));
    const ws = sockets[0];
    ws.frame({ type: "hello", server: "rill", max_tokens_limit: 77 });
    ws.frame({ type: "accepted", id: "a", worker: "w3" });
    ws.frame({ type: "token", id: "a", token: { id: 1, text: "A", position: 0, latency_ms: 1 } });
    ws.frame({ type: "tokens", id: "a", tokens: [{ id: 2, text: "B", position: 1, latency_ms: 2 },
                                                 { id: 3, text: "C", position: 2, latency_ms: 3 }] });
    ws.frame({ type: "complete", id: "a", finish_reason: "length", summary: { total_tokens: 3 } });
    const done = await g.done;
    const g2 = c.generate("x", { id: 7 });
    ws.frame({ type: "error", id: 7, error: { code: "max_tokens_exceeded", message: "too many", recoverable: false } });
    const e2 = await g2.done.catch((e) => e);
    const g3 = c.generate("y", { id: "b" });
    g3.cancel();
    // One that streams, and one sent but not accepted yet, when the socket drops.
    const g4 = c.generate("z", { id: "d" });
    ws.frame({ type: "accepted", id: "d", worker: "w0", resume_token: "T" });
    ws.frame({ type: "tokens", id: "d", tokens: [{ id: 4, text: "D", position: 0 }, { id: 5, text: "E", position: 1 }] });
    const g5 = c.generate("w", { id: "e", max_tokens: 2 });
    const g4events = [];
    for (const t of ["reconnecting", "resumed"]) g4.addEventListener(t, (e) => g4events.push([t, e.detail.from]));
    ws.onclose({ code: 1006, reason: "" });                     // the socket drops
    const d3 = await g3.done;                                   // cancelled, never accepted: nothing to resume
    const resuming = c.resuming;
    await new Promise((r) => setTimeout(r, 100));               // backoff, then a new socket
    const ws2 = sockets[1];
    ws2.frame({ type: "resumed", id: "d", from: 2 });
    ws2.frame({ type: "tokens", id: "d", tokens: [{ id: 5, text: "E", position: 1 }, { id: 6, text: "F", position: 2 }] });
    ws2.frame({ type: "complete", id: "d", finish_reason: "length", summary: {} });
    await g4.done;
    ws2.frame({ type: "error", id: "e", error: { code: "resume_failed", message: "gone", recoverable: false } });
    const e5 = await g5.done.catch((e) => e);
    // A long backoff is cut short when the device says it is online again.
    const c2 = new RillClient("ws://example.invalid/stream", { minDelayMs: 60000, maxDelayMs: 60000 });
    c2.connect();
    await new Promise((r) => setTimeout(r, 20));
    const n0 = sockets.length;
    sockets[n0 - 1].onclose({ code: 1006, reason: "" });
    const waited = c2.state;
    dispatchEvent(new Event("online"));
    const online = [waited, c2.state, sockets.length - n0];
    c2.close();
    return { proto: ws.proto, sent: ws.sent, sent2: ws2.sent, worker: g.worker, text: g.text, seen, done,
             limit: c.server && c.server.max_tokens_limit,
             e2: [e2.name, e2.code, e2.message, e2.recoverable], d3, resuming, g4: [g4.text, g4.nextPosition],
             g4events, e5: [e5.code, e5.recoverable], online, states, sockets: sockets.length, state: c.state };
  } finally {
    globalThis.WebSocket = real;
  }
})()
"""


def test_client_unpacks_coalesced_frames_and_reconnects(browser, pipelines, small_model):
    pipeline = pipelines(small_model)
    page = open_page(browser, pipeline)
    r = page.js(CLIENT_SCRIPT)
    assert r["proto"] == "rill.json.v1"
    assert r["sent"][0] == {"type": "hello", "client": {"name": "rill-web"}, "key": "k1"}
    assert r["sent"][1] == {"type": "generate", "id": "a", "prompt": "hi", "max_tokens": 3,
                            "params": {"temperature": 0}}
    assert r["sent"][3:] == [{"type": "generate", "id": "b", "prompt": "y"}, {"type": "cancel", "id": "b"},
                             {"type": "generate", "id": "d", "prompt": "z"},
                             {"type": "generate", "id": "e", "prompt": "w", "max_tokens": 2}]
    assert r["worker"] == "w3" and r["text"] == "ABC" and r["seen"] == [0, 1, 2]
    assert r["done"] == {"finish_reason": "length", "summary": {"total_tokens": 3}}
    assert r["limit"] == 77
    assert r["e2"] == ["RillError", "max_tokens_exceeded", "too many", False]
    # After the drop: the cancelled one that was never accepted is over; the
    # streaming one is resumed from its next position, the unaccepted one
    # sent again; a token replayed twice counts once.
    assert r["d3"] == {"finish_reason": "cancelled", "summary": {}}
    assert r["resuming"] == 1
    assert r["sent2"] == [{"type": "hello", "client": {"name": "rill-web"}, "key": "k1"},
                          {"type": "resume", "id": "d", "resume_token": "T", "from": 2},
                          {"type": "generate", "id": "e", "prompt": "w", "max_tokens": 2}]
    assert r["g4"] == ["DEF", 3] and r["g4events"] == [["reconnecting", 2], ["resumed", 2]]
    assert r["e5"] == ["resume_failed", False]
    assert r["states"] == ["connecting", "open", "waiting", "connecting", "open", "open"]
    assert r["online"] == ["waiting", "connecting", 1]
    assert r["sockets"] == 4 and r["state"] == "open"
    assert page.errors() == []


def test_page_chat_mode_sends_the_conversation_as_messages(browser, pipelines, small_model):
    """Chat mode: each turn sends the whole conversation as messages (the
    worker renders them with the chat template: ChatML for the test
    model), and its answer equals the same messages sent over a plain
    WebSocket; a finished turn joins the history shown above the prompt."""
    import asyncio

    import rillclient as rc
    pipeline = pipelines(small_model)
    page = open_page(browser, pipeline)
    greedy = {"temperature": 0, "top_p": 1, "top_k": 0, "min_p": 0, "repetition_penalty": 1}
    try:
        page.js("document.getElementById('temperature').value = '0'")
        page.js("document.getElementById('max_tokens').value = '12'")
        page.click("#chat")
        answers = []
        for turn in ("Hello there", "Tell me more"):
            page.type_into("#prompt", turn)
            page.click("#generate")
            page.wait("document.body.dataset.state === 'done' && !document.getElementById('summary').hidden",
                      what=f"turn '{turn}' to finish")
            answers.append(page.js("[...document.querySelectorAll('#output .tok')].map(e => e.textContent).join('')"))
        roles = page.js("[...document.querySelectorAll('#history li')].map(e => e.dataset.role)")
        assert roles == ["user", "assistant", "user", "assistant"], roles
        assert page.js("document.getElementById('prompt').value") == ""

        async def ws(messages):
            async with await rc.Client.connect(pipeline.url, rc.JSON) as c:
                await c.send({"type": "generate", "id": "w", "messages": messages, "max_tokens": 12,
                              "params": {**greedy, "top_p": 0.95, "top_k": 40, "min_p": 0.05}})
                (g,) = await c.wait_done("w")
            return "".join(t["text"] for t in g.tokens)

        first = [{"role": "user", "content": "Hello there"}]
        second = first + [{"role": "assistant", "content": answers[0]}, {"role": "user", "content": "Tell me more"}]
        assert asyncio.run(ws(first)) == answers[0]
        assert asyncio.run(ws(second)) == answers[1]
        assert page.errors() == []
    finally:
        page.call("Page.close")
