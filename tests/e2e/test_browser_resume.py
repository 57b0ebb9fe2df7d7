"""The try-it page keeps streaming when the network or the gateway goes away
(issue 13, part 4), in real browsers: Chromium, a mobile-emulated Chromium
(touch, a phone's viewport, a mobile user agent), Firefox ESR and WebKit
(webdrive.py says how each is driven).

- The network drops under the page: the page's connection runs through a
  TCP proxy that the test resets (and refuses new connections for a
  moment).  The page says "Reconnecting…", resumes, and its text ends up
  exactly an undisturbed run's.
- The gateway is killed (kill -9) and a new one started on the same port
  with the same workers and run dir.  The worker replays what it runs to
  the new gateway, which accepts the old resume token (a MAC under the run
  dir's key): the page reconnects, resumes, and its text ends up exactly an
  undisturbed run's.
"""
import os
import signal

import pytest

import rillclient as rc
from conftest import ROOT, wait_for
from rillclient import GREEDY, sampling
from tcpproxy import TcpProxy
from webdrive import BROWSERS, launch

WEB = os.path.join(ROOT, "gateway", "web")
N = 300          # about 2 s on the 24M model: the drop lands mid-stream
PROMPT = "The lighthouse keeper"

# Records every text the connection indicator shows, and any script error.
WATCH = """
window.__conn = [];
window.__errors = [];
addEventListener('error', (e) => __errors.push(String(e.message)));
addEventListener('unhandledrejection', (e) => __errors.push(String(e.reason)));
new MutationObserver(() => __conn.push(document.getElementById('conn-text').textContent))
  .observe(document.getElementById('conn'), {subtree: true, childList: true, characterData: true});
return true;
"""

TOKENS = "document.querySelectorAll('#output .tok').length"


@pytest.fixture(scope="module", params=BROWSERS)
def browser(request):
    b = launch(request.param)
    yield b
    b.close()


@pytest.fixture(scope="module")
def gw(module_pipelines, small_model):
    # The proxy's port is in the page's Host; the page itself comes from this tree.
    return module_pipelines(small_model, gateway_args=("--allowed_hosts", "*", "--web_root", WEB))


def open_page(b, port):
    b.goto(f"http://127.0.0.1:{port}/")
    b.wait("document.getElementById('conn') && document.getElementById('conn').dataset.state === 'open'",
           what="the page's WebSocket to connect")
    b.js(WATCH)


def start(b, max_tokens):
    b.type_into("#prompt", PROMPT)
    b.type_into("#temperature", "0")
    b.type_into("#max_tokens", str(max_tokens))
    b.click("#generate")


def positions(b):
    return b.js("return [...document.querySelectorAll('#output .tok')].map(s => +s.title.split(' · position ')[1]"
                ".split(' ')[0]);")


def test_page_resumes_after_the_network_drops(browser, gw, small_model):
    want = rc.expected(small_model, PROMPT, N, sampling(GREEDY))
    with TcpProxy(("127.0.0.1", gw.port)) as px:
        open_page(browser, px.port)
        if browser.name == "chromium-mobile":
            # It is the phone it claims to be (the page's viewport is the device's width).
            assert browser.js("return [innerWidth, navigator.maxTouchPoints > 0, 'ontouchstart' in window,"
                              " /Mobile/.test(navigator.userAgent)];") == [412, True, True, True]
        start(browser, N)
        browser.wait(f"{TOKENS} >= 10", what="the first tokens")
        px.cut(hold=1.0)  # the network goes, and stays away for a second
        browser.wait("document.getElementById('conn-text').textContent === 'Reconnecting…'", timeout=5,
                     what="the page to say it is reconnecting")
        assert browser.js("return document.body.dataset.state;") == "running"
        browser.wait("document.body.dataset.state === 'done'", what="the generation to finish")
        text = browser.js("return document.getElementById('output').textContent;")
        assert browser.js("return document.getElementById('error').hidden;"), \
            browser.js("return document.getElementById('error').textContent;")
        assert text == "".join(t for _, _, t in want)
        assert positions(browser) == list(range(N)), "lost or repeated tokens"
        assert browser.js("return document.querySelector('#summary-list [data-key=finish_reason] dd')"
                          ".textContent;") == "length"
        conn = browser.js("return __conn;")
        assert "Reconnecting…" in conn and conn[-1] == "Connected", conn
        assert px.cuts == 1 and px.refused >= 1 and px.accepted >= 2
        assert browser.js("return __errors;") == []


def test_page_goes_on_after_the_gateway_is_killed(browser, pipelines, small_model):
    """kill -9 of the gateway under the page: a new gateway process adopts
    what the worker runs (worker/journal.h) and accepts the old resume
    token; the page reconnects, resumes and ends with the undisturbed text."""
    p = pipelines(small_model, gateway_args=("--web_root", WEB))
    want = rc.expected(small_model, PROMPT, N, sampling(GREEDY))
    full = "".join(t for _, _, t in want)
    open_page(browser, p.port)
    start(browser, N)
    browser.wait(f"{TOKENS} >= 10", what="the first tokens")
    argv = p.gateway.args
    p.gateway.send_signal(signal.SIGKILL)
    p.gateway.wait()
    browser.wait("document.getElementById('conn-text').textContent === 'Reconnecting…'", timeout=5,
                 what="the page to say it is reconnecting")
    p.gateway = p._spawn("gateway", argv)  # same port, same workers, same run dir (its resume key)
    wait_for(lambda: p._ready(1), what="the new gateway")
    browser.wait("document.body.dataset.state === 'done'", what="the generation to end")
    assert browser.js("return document.getElementById('error').hidden;"), \
        browser.js("return document.getElementById('error').textContent;")
    assert browser.js("return document.getElementById('output').textContent;") == full
    assert positions(browser) == list(range(N))
    assert browser.js("return __errors;") == []
