"""The gateway's HTTP side: /health, /ready, /metrics (Prometheus text)."""
import os
import shutil
import subprocess
import tempfile

import pytest

import conftest
import rillclient as rc
from rillclient import GREEDY, JSON, Client, run, sampling

WIRE_CODES = ["bad_request", "unauthorized", "forbidden_origin", "too_large", "prompt_too_long",
              "max_tokens_exceeded", "context_length_exceeded", "too_many_streams", "too_many_connections",
              "rate_limited", "overloaded", "shutting_down", "memory_limit_exceeded", "worker_lost", "cancelled",
              "timeout", "slow_consumer", "not_found", "duplicate_id", "no_worker", "internal", "resume_failed"]

HISTOGRAMS = ["rill_gateway_time_to_first_token_seconds", "rill_gateway_inter_token_seconds",
              "rill_gateway_token_delivery_seconds"]


@pytest.fixture(scope="module")
def gw(module_pipelines, tiny_model):
    return module_pipelines(tiny_model)


def scrape(port):
    status, body, headers = conftest.http_get(port, "/metrics")
    assert status == 200
    assert headers.get("Content-Type", headers.get("content-type", "")).startswith("text/plain")
    return body


def test_health_and_ready(gw):
    status, body, _ = conftest.http_get(gw.port, "/health")
    assert status == 200 and body.strip() == "ok"
    status, body, _ = conftest.http_get(gw.port, "/ready")
    assert status == 200 and "1 worker ready" in body


def test_ready_is_503_without_workers():
    """A gateway whose only worker never comes up: alive, not ready."""
    port = conftest.free_port()
    run_dir = tempfile.mkdtemp(prefix="rill-e2e-")
    g = subprocess.Popen([conftest.binary("rill-gateway"), "--instance", "tnoworker", "--run_dir", run_dir,
                          "--listen", f"127.0.0.1:{port}",
                          "--worker_list", f"ipc://{run_dir}/w0.sock@/rill-tnoworker-w0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def health():
            try:
                return conftest.http_get(port, "/health")[0] == 200
            except OSError:
                return False
        conftest.wait_for(health, what="gateway up")
        status, body, _ = conftest.http_get(port, "/ready")
        assert status == 503 and "0 workers ready" in body
    finally:
        g.terminate()
        g.wait(10)
        shutil.rmtree(run_dir, ignore_errors=True)


def test_metrics_is_valid_prometheus_text(gw):
    body = scrape(gw.port)
    if not os.path.exists("/usr/bin/promtool"):
        pytest.skip("/usr/bin/promtool is not installed: Prometheus format not checked by promtool")
    complaint = rc.promtool_check(body)
    assert complaint is None, complaint


def test_metrics_has_the_families_and_they_count(gw, tiny_model):
    types, _ = rc.parse_prom(scrape(gw.port))
    for name, typ in [("rill_gateway_requests_total", "counter"), ("rill_gateway_tokens_total", "counter"),
                      ("rill_gateway_active_streams", "gauge"), ("rill_gateway_connections", "gauge"),
                      ("rill_gateway_connections_total", "counter"), ("rill_gateway_errors_total", "counter"),
                      ("rill_gateway_workers_ready", "gauge")] + [(h, "histogram") for h in HISTOGRAMS]:
        assert types.get(name) == typ, (name, types.get(name))

    n = 17
    params = sampling(GREEDY)

    def snap():
        _, s = rc.parse_prom(scrape(gw.port))
        return s

    before = snap()

    async def main():
        async with await Client.connect(gw.url, JSON) as c:
            g = await c.run("Metrics", n, params)
            rc.check_complete(g, rc.expected(tiny_model, "Metrics", n, params))
            mid = snap()
            await c.send_raw("{not json")
            await c.until(lambda: any(m["type"] == "error" for m in c.others))
            await c.cancel("nobody")
            await c.wait_done("nobody")
            return mid

    mid = run(main())
    after = snap()

    def d(name, **labels):
        k = (name, frozenset(labels.items()))
        return after[k] - before[k]

    def v(snapshot, name, **labels):
        return snapshot[(name, frozenset(labels.items()))]

    assert d("rill_gateway_requests_total") == 1
    assert d("rill_gateway_requests_completed_total") == 1
    assert d("rill_gateway_tokens_total") == n
    assert d("rill_gateway_connections_total") == 1
    assert v(mid, "rill_gateway_connections") == 1 and v(after, "rill_gateway_connections") == 0
    assert v(after, "rill_gateway_active_streams") == 0
    assert v(after, "rill_gateway_workers_ready") == 1
    for code in WIRE_CODES:
        assert ("rill_gateway_errors_total", frozenset({"code": code}.items())) in after, code
    assert d("rill_gateway_errors_total", code="bad_request") == 1
    assert d("rill_gateway_errors_total", code="not_found") == 1
    # Histograms: one first token, n tokens between; buckets cumulative, +Inf == count.
    assert d("rill_gateway_time_to_first_token_seconds_count") == 1
    assert d("rill_gateway_inter_token_seconds_count") == n
    for h in HISTOGRAMS:
        buckets = sorted(((float(dict(lab)["le"]), val) for (name, lab), val in after.items()
                          if name == h + "_bucket"), key=lambda x: x[0])
        assert buckets and buckets[-1][0] == float("inf")
        assert [b for _, b in buckets] == sorted(b for _, b in buckets), h
        assert buckets[-1][1] == after[(h + "_count", frozenset())]
        assert after[(h + "_sum", frozenset())] >= 0


def test_unknown_path_is_404(gw):
    status, _, _ = conftest.http_get(gw.port, "/no/such/thing")
    assert status == 404
