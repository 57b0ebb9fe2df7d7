"""Real browsers for the e2e tests, each behind the same small interface
(goto, js, find/click/type, wait, close), driven the way each one can be
here without any Python package beyond the standard library:

- Chromium, desktop and mobile-emulated: chromedriver (W3C WebDriver over
  HTTP); the mobile one through Chrome's mobileEmulation capability (touch,
  a phone's viewport and pixel ratio, a mobile user agent).
- WebKit: WebKitWebDriver (Debian's webkit2gtk-driver) with its MiniBrowser.
  WebKitGTK needs a display: an Xvfb of our own is started for it.
- Firefox ESR: Marionette, the protocol geckodriver itself speaks (Debian
  ships no geckodriver), on a port Firefox picks and writes to its profile.

launch(name) starts one, or calls pytest.skip with the reason it cannot run
here (a missing package, named).
"""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FIREFOX = "/usr/bin/firefox-esr"
WEBKITDRIVER = "/usr/bin/WebKitWebDriver"
XVFB = "/usr/bin/Xvfb"

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference

# A phone as Chrome's DevTools describe one (Pixel 7 class), for mobileEmulation.
MOBILE_UA = ("Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/156.0.0.0 Mobile Safari/537.36")
MOBILE_METRICS = {"width": 412, "height": 915, "pixelRatio": 2.625, "touch": True, "mobile": True}

BROWSERS = ("chromium", "chromium-mobile", "firefox", "webkit")


class DriverError(Exception):
    pass


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _need(path, package):
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed (Debian package {package}; `make deps` installs it)")


class Browser:
    """What the tests use; subclasses speak one protocol."""
    name = "?"

    def goto(self, url):
        raise NotImplementedError

    def js(self, body, *args):
        """Run `body` (a function body: say `return ...`) in the page."""
        raise NotImplementedError

    def find(self, css):
        raise NotImplementedError

    def click(self, css):
        raise NotImplementedError

    def type_into(self, css, text):
        raise NotImplementedError

    def wait(self, expr, timeout=30.0, what=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(f"return !!({expr});"):
                return
            time.sleep(0.03)
        raise TimeoutError(f"{self.name}: timed out waiting for {what or expr}")

    def close(self):
        pass


class WebDriver(Browser):
    """A W3C WebDriver server (chromedriver, WebKitWebDriver) and one session."""

    def __init__(self, name, argv, capabilities, env=None, cleanup=()):
        self.name = name
        self.port = _free_port()
        self.cleanup = list(cleanup)
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"rill-{name}-", suffix=".log")
        self.proc = subprocess.Popen([*argv, f"--port={self.port}"], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env)
        self.sid = None
        deadline = time.monotonic() + 20
        while True:
            try:
                self._http("GET", "/status")
                break
            except (OSError, DriverError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise DriverError(f"{argv[0]} did not start: {self._log_tail()}")
                time.sleep(0.05)
        r = self._http("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}}, timeout=60)
        self.sid = r["sessionId"]
        self.capabilities = r["capabilities"]

    def _log_tail(self):
        self.log.seek(0)
        return self.log.read()[-2000:]

    def _http(self, method, path, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as f:
                return json.load(f)["value"]
        except urllib.error.HTTPError as e:
            v = json.load(e).get("value", {})
            raise DriverError(f"{self.name} {method} {path}: {v.get('error')}: {v.get('message', '')[:500]}")

    def _s(self, method, path, body=None):
        return self._http(method, f"/session/{self.sid}{path}", body)

    def goto(self, url):
        self._s("POST", "/url", {"url": url})

    def js(self, body, *args):
        return self._s("POST", "/execute/sync", {"script": body, "args": list(args)})

    def find(self, css):
        return self._s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def click(self, css):
        self._s("POST", f"/element/{self.find(css)}/click", {})

    def type_into(self, css, text):
        e = self.find(css)
        self._s("POST", f"/element/{e}/clear", {})
        self._s("POST", f"/element/{e}/value", {"text": text})

    def close(self):
        try:
            if self.sid:
                self._http("DELETE", f"/session/{self.sid}", timeout=15)
        except (OSError, DriverError):
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        for f in self.cleanup:
            f()


class Marionette(Browser):
    """Firefox and its Marionette server: messages are `length:json`,
    commands [0, id, name, params], answers [1, id, error, result]."""

    def __init__(self):
        self.name = "firefox"
        self.profile = tempfile.mkdtemp(prefix="rill-firefox-")
        prefs = {
            "marionette.port": 0,  # any free port; Firefox writes it to MarionetteActivePort
            "browser.shell.checkDefaultBrowser": False,
            "datareporting.policy.dataSubmissionEnabled": False,
            "toolkit.telemetry.reportingpolicy.firstRun": False,
            "app.update.disabledForTesting": True,
            "browser.startup.homepage_override.mstone": "ignore",
            "network.captive-portal-service.enabled": False,
            "network.connectivity-service.enabled": False,
        }
        with open(os.path.join(self.profile, "user.js"), "w") as f:
            for k, v in prefs.items():
                f.write(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n")
        self.log = open(os.path.join(self.profile, "firefox.log"), "w+")
        env = dict(os.environ, MOZ_HEADLESS="1")
        self.proc = subprocess.Popen([FIREFOX, "--headless", "--marionette", "--no-remote", "--profile", self.profile,
                                      "about:blank"], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        port_file = os.path.join(self.profile, "MarionetteActivePort")
        deadline = time.monotonic() + 60
        while True:
            try:
                with open(port_file) as f:
                    port = int(f.read().strip())
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.log.seek(0)
                    raise DriverError(f"firefox did not start Marionette: {self.log.read()[-2000:]}")
                time.sleep(0.1)
        self.rfile = self.sock.makefile("rb")
        self.next_id = 0
        self._read()  # the server's greeting
        self.capabilities = self._cmd("WebDriver:NewSession", {"capabilities": {}})["capabilities"]

    def _read(self):
        n = b""
        while not n.endswith(b":"):
            c = self.rfile.read(1)
            if not c:
                raise DriverError("firefox closed Marionette")
            n += c
        return json.loads(self.rfile.read(int(n[:-1])))

    def _cmd(self, name, params):
        self.next_id += 1
        b = json.dumps([0, self.next_id, name, params]).encode()
        self.sock.sendall(str(len(b)).encode() + b":" + b)
        while True:
            _, mid, err, result = self._read()
            if mid == self.next_id:
                break
        if err:
            raise DriverError(f"firefox {name}: {err.get('error')}: {err.get('message', '')[:500]}")
        return result

    def goto(self, url):
        self._cmd("WebDriver:Navigate", {"url": url})

    def js(self, body, *args):
        return self._cmd("WebDriver:ExecuteScript", {"script": body, "args": list(args)})["value"]

    def find(self, css):
        return self._cmd("WebDriver:FindElement", {"using": "css selector", "value": css})["value"][ELEMENT]

    def click(self, css):
        self._cmd("WebDriver:ElementClick", {"id": self.find(css)})

    def type_into(self, css, text):
        e = self.find(css)
        self._cmd("WebDriver:ElementClear", {"id": e})
        self._cmd("WebDriver:ElementSendKeys", {"id": e, "text": text})

    def close(self):
        try:
            self._cmd("Marionette:Quit", {"flags": ["eForceQuit"]})
        except (OSError, DriverError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def _chromium(mobile):
    _need(CHROMIUM, "chromium")
    _need(CHROMEDRIVER, "chromium-driver")
    opts = {"binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--mute-audio"]}
    if mobile:
        opts["mobileEmulation"] = {"deviceMetrics": MOBILE_METRICS, "userAgent": MOBILE_UA}
    else:
        opts["args"].append("--window-size=1100,1000")
    return WebDriver("chromium-mobile" if mobile else "chromium", [CHROMEDRIVER],
                     {"browserName": "chrome", "goog:chromeOptions": opts})


def _webkit():
    _need(WEBKITDRIVER, "webkit2gtk-driver")
    _need(XVFB, "xvfb")
    # A display of our own: the first free number from 90 up.
    for n in range(90, 140):
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"):
            break
    xlog = tempfile.TemporaryFile()
    xvfb = subprocess.Popen([XVFB, f":{n}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            stdout=xlog, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not os.path.exists(f"/tmp/.X11-unix/X{n}"):
        if xvfb.poll() is not None or time.monotonic() > deadline:
            xlog.seek(0)
            raise DriverError(f"Xvfb :{n} did not start: {xlog.read()[-1000:]!r}")
        time.sleep(0.05)

    def stop_xvfb():
        xvfb.terminate()
        xvfb.wait()
        xlog.close()

    env = dict(os.environ, DISPLAY=f":{n}")
    env.pop("WAYLAND_DISPLAY", None)
    try:
        return WebDriver("webkit", [WEBKITDRIVER], {"webkitgtk:browserOptions": {"args": ["--automation"]}},
                         env=env, cleanup=[stop_xvfb])
    except BaseException:
        stop_xvfb()
        raise


def _firefox():
    _need(FIREFOX, "firefox-esr")
    return Marionette()


def launch(name):
    return {"chromium": lambda: _chromium(False), "chromium-mobile": lambda: _chromium(True),
            "firefox": _firefox, "webkit": _webkit}[name]()
