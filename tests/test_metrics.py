"""``GET /metrics`` as Prometheus scrapes it: every scrape is parsed with
prometheus_client's own parser, and the tests look at what moved between two scrapes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from hermes_api.app import create_app
from hermes_api.errors import UpstreamUnavailableError
from hermes_api.exchange import Exchange
from hermes_api.exchange import _exchange as exchange_var
from hermes_api.meters import ObservedTurns
from hermes_api.metrics import MULTIPROC_ENV, Metrics, worker_directory
from hermes_api.store import open_store
from hermes_api.turns import Turn, batches

from .conftest import FakeUpstream, HermesHome, chunks, completion, digest, sse_body, wait_until

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
WEBUI_KEY, PROM_KEY, OTHER_KEY = "sk-webui-METRICS-SECRET", "sk-prom-METRICS-SECRET", "sk-other-METRICS-SECRET"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape: (sample name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def keyed_config() -> dict[str, Any]:
    return {
        "keys": [
            {"name": "webui", "key_sha256": digest(WEBUI_KEY)},
            {"name": "prometheus", "key_sha256": digest(PROM_KEY), "profiles": [], "metrics": True},
            {"name": "other", "key_sha256": digest(OTHER_KEY)},
        ]
    }


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(make_app: Callable[..., Any]) -> TestClient:
    with TestClient(make_app(**keyed_config()), raise_server_exceptions=False) as client:
        yield client


def scrape(client: TestClient) -> tuple[str, Samples]:
    r = client.get("/metrics", headers=auth(PROM_KEY))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text, parse(r.text)


def test_requests_tokens_and_latencies_move_as_a_scraper_sees_them(keyed: TestClient, upstream) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["model"] == "model-gamma":
            return httpx.Response(503, json={"error": {"message": "down"}})
        if body.get("stream"):
            return httpx.Response(200, content=sse_body(*chunks("a b", usage=True)))
        return httpx.Response(200, json=completion())

    upstream.post("/chat/completions").mock(side_effect=answer)
    _, before = scrape(keyed)
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    for _ in range(3):
        assert keyed.post("/v1/chat/completions", json={**chat, "model": "alpha"}, headers=auth(WEBUI_KEY)).is_success
    streamed = {**chat, "model": "beta", "stream": True}
    assert "[DONE]" in keyed.post("/v1/chat/completions", json=streamed, headers=auth(OTHER_KEY)).text
    r = keyed.post("/v1/responses", json={"model": "alpha", "input": "hi"}, headers=auth(WEBUI_KEY))
    assert r.json()["usage"]["input_tokens"] == 9
    failed = keyed.post("/v1/chat/completions", json={**chat, "model": "gamma"}, headers=auth(WEBUI_KEY))
    assert failed.status_code == 502
    assert keyed.get("/v1/models", headers=auth("sk-wrong")).status_code == 401
    text, after = scrape(keyed)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "hermes_api_requests_total"
    assert moved(requests, endpoint="create_chat_completion", profile="alpha", key="webui", status="200") == 3
    assert moved(requests, endpoint="create_chat_completion", profile="beta", key="other", status="200") == 1
    assert moved(requests, endpoint="create_response", profile="alpha", key="webui", status="200") == 1
    assert moved(requests, endpoint="create_chat_completion", profile="gamma", key="webui", status="502") == 1
    assert moved(requests, endpoint="none", profile="", key="", status="401") == 1  # refused before routing
    tokens = "hermes_api_tokens_total"
    assert moved(tokens, profile="alpha", key="webui", type="input") == 3 * 9 + 9
    assert moved(tokens, profile="alpha", key="webui", type="output") == 3 * 3 + 3
    assert moved(tokens, profile="beta", key="other", type="input") == 5  # the stream's last usage chunk
    assert moved(tokens, profile="beta", key="other", type="output") == 2
    assert moved("hermes_api_upstream_errors_total", profile="gamma", kind="upstream_unavailable") == 1
    for histogram in ("hermes_api_request_duration_seconds", "hermes_api_time_to_first_byte_seconds"):
        assert moved(f"{histogram}_count", endpoint="create_chat_completion", profile="alpha") == 3
        assert moved(f"{histogram}_bucket", endpoint="create_chat_completion", profile="alpha", le="+Inf") == 3
        assert moved(f"{histogram}_sum", endpoint="create_chat_completion", profile="alpha") > 0
    assert value(after, "hermes_api_turns_in_flight", profile="alpha") == 0
    assert moved("hermes_api_store_writes_total", operation="put_response") == 1
    # the six turns' usage rows (not the 401's), counted once their commit is over
    usage_rows = lambda: value(scrape(keyed)[1], "hermes_api_store_writes_total", operation="record_usage")  # noqa: E731
    wait_until(lambda: usage_rows() - value(before, "hermes_api_store_writes_total", operation="record_usage") == 6,
               "the usage rows' commit")  # fmt: skip
    keys = {dict(labels).get("key") for _, labels in after}
    assert keys <= {None, "", "webui", "other", "prometheus"}, keys
    for secret in (WEBUI_KEY, PROM_KEY, OTHER_KEY, digest(WEBUI_KEY), digest(PROM_KEY), "sk-alpha-secret"):
        assert secret not in text


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        pytest.param({}, 401, "invalid_api_key", id="no-key"),
        pytest.param(auth("sk-wrong"), 401, "invalid_api_key", id="wrong-key"),
        pytest.param(auth(WEBUI_KEY), 403, "forbidden", id="key-without-metrics"),
        pytest.param(auth(PROM_KEY), 200, None, id="metrics-key"),
    ],
)
def test_a_metrics_key_is_needed_when_one_is_configured(keyed: TestClient, headers, status: int, code) -> None:
    r = keyed.get("/metrics", headers=headers)
    assert r.status_code == status
    if code:
        assert r.json()["error"]["code"] == code
        assert "hermes_api" not in r.text


def test_without_metrics_keys_only_this_machine_may_scrape(make_app, live) -> None:
    server = live(make_app(keys=[{"name": "webui", "key_sha256": digest(WEBUI_KEY)}]))
    r = httpx.get(server.url + "/metrics")  # loopback, no key needed
    assert r.status_code == 200 and "hermes_api_requests_total" in r.text
    for proxied in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}, {"X-Real-IP": "10.0.0.1"}):
        r = httpx.get(server.url + "/metrics", headers=proxied)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden"), proxied
    with TestClient(make_app(), raise_server_exceptions=False) as remote:  # TestClient's client is "testclient"
        assert remote.get("/metrics").status_code == 403


def test_refusals_and_turns_in_flight(fake_upstream: FakeUpstream, home: HermesHome, make_settings, live) -> None:
    home.add("held", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("stall")})
    settings = make_settings(expose=["default", "held"], per_profile={"held": {"max_concurrent": 1}}, **keyed_config())
    server = live(create_app(settings, environ={}))
    body = {"model": "held", "stream": True, "messages": [{"role": "user", "content": "hold"}]}
    with httpx.Client(base_url=server.url, timeout=10, headers=auth(WEBUI_KEY)) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as held:
            lines = held.iter_lines()  # kept: closing it would end the stream
            next(line for line in lines if line.startswith("data: "))
            assert client.post("/v1/chat/completions", json=body).status_code == 429
            during = parse(client.get("/metrics", headers=auth(PROM_KEY)).text)
        for _ in range(200):  # the server learns of the client leaving a moment later
            after = parse(client.get("/metrics", headers=auth(PROM_KEY)).text)
            if value(after, "hermes_api_turns_in_flight", profile="held") == 0:
                break
            time.sleep(0.02)
    refusals = "hermes_api_limit_refusals_total"
    assert value(during, refusals, profile="held", key="webui", code="concurrency_limit_exceeded") == 1
    assert value(during, "hermes_api_turns_in_flight", profile="held") == 1
    assert value(after, "hermes_api_turns_in_flight", profile="held") == 0
    assert value(after, "hermes_api_requests_total", endpoint="create_chat_completion", profile="held", key="webui",
                 status="429") == 1  # fmt: skip


def test_store_failures_are_counted(make_settings, upstream) -> None:
    upstream.post("/chat/completions").respond(json=completion())

    async def failing_store(settings):
        store = await open_store(settings)

        async def put_response(record) -> None:
            raise OSError("disk full")

        def insert_rows(db, groups) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        store.put_response = put_response
        store._insert_rows = insert_rows
        return store

    app = create_app(make_settings(**keyed_config()), environ={}, transport=httpx.MockTransport(upstream.async_handler),
                     store=failing_store)  # fmt: skip
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/v1/responses", json={"model": "alpha", "input": "hi"}, headers=auth(WEBUI_KEY))
        assert r.status_code == 500
        failures = "hermes_api_store_write_failures_total"
        wait_until(lambda: value(scrape(client)[1], failures, operation="record_usage") == 1, "the usage row's commit")
        _, samples = scrape(client)
    assert value(samples, "hermes_api_store_writes_total", operation="put_response") == 1
    assert value(samples, "hermes_api_store_write_failures_total", operation="put_response") == 1
    assert value(samples, "hermes_api_store_writes_total", operation="record_usage") == 1
    assert value(samples, "hermes_api_requests_total", endpoint="create_response", profile="alpha", key="webui",
                 status="500") == 1  # fmt: skip


def test_metrics_can_be_turned_off(make_app, upstream) -> None:
    upstream.post("/chat/completions").respond(json=completion())
    with TestClient(make_app(metrics=False, **keyed_config())) as client:
        body = {"model": "alpha", "messages": [{"role": "user", "content": "x"}]}
        assert client.post("/v1/chat/completions", json=body, headers=auth(WEBUI_KEY)).status_code == 200
        r = client.get("/metrics", headers=auth(PROM_KEY))
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")


def test_latency_buckets_are_prometheus_buckets() -> None:
    """A value on a bound counts in that bucket (``le``), buckets are cumulative, the
    sum is the seconds observed, as prometheus_client's own observe() would have it."""
    metrics = Metrics()
    for seconds in (0.5, 0.6, 700.0):
        exchange = Exchange(started=0.0)
        exchange.finished, exchange.endpoint, exchange.profile, exchange.status = seconds, "create_response", "p", 200
        metrics.observe(exchange)
    samples = parse(metrics.render().decode())
    where = {"endpoint": "create_response", "profile": "p"}
    buckets = {le: value(samples, "hermes_api_request_duration_seconds_bucket", **where, le=le)
               for le in ("0.25", "0.5", "1.0", "600.0", "+Inf")}  # fmt: skip
    assert buckets == {"0.25": 0, "0.5": 1, "1.0": 2, "600.0": 2, "+Inf": 3}
    assert value(samples, "hermes_api_request_duration_seconds_sum", **where) == pytest.approx(701.1)
    assert value(samples, "hermes_api_time_to_first_byte_seconds_count", **where) == 0  # no body byte seen


def test_the_agent_runtime_counts_its_workers(make_settings) -> None:
    metrics = Metrics()
    with TestClient(create_app(make_settings(**keyed_config()), environ={}, metrics=metrics)) as client:
        metrics.agent_worker("alpha", "start")
        metrics.agent_worker("alpha", "crash")
        metrics.agent_worker("alpha", "restart")
        metrics.agent_worker("alpha", "start")
        _, samples = scrape(client)
    events = "hermes_api_agent_worker_events_total"
    assert value(samples, events, profile="alpha", event="start") == 2
    assert value(samples, events, profile="alpha", event="crash") == 1
    assert value(samples, events, profile="alpha", event="restart") == 1


def defined_series() -> set[str]:
    """Every sample name the metrics can have, from their definitions."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in Metrics().registry.collect()
        if family.name.startswith("hermes_api")
        for suffix in suffixes[family.type]
    }


def test_the_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", ())]
    queried = {name for expr in exprs for name in re.findall(r"\bhermes_api_[a-z_]+", expr)}
    assert len(exprs) >= 8 and queried
    assert queried - defined_series() == set(), "the dashboard queries a metric that does not exist"
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in defined_series()}
    assert families - {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in queried} == set(), "not on the dashboard"


def test_the_readme_scrape_config_is_valid_yaml() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(scrape_configs:.*?)```", readme, re.S)
    assert block, "README has a Prometheus scrape config"
    job = yaml.safe_load(block.group(1))["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"]


# -- several processes ------------------------------------------------------------------


def test_two_processes_sharing_a_directory_are_summed(
    fake_upstream: FakeUpstream, home: HermesHome, tmp_path: Path, serve_process
) -> None:
    """Two ``hermes-api serve`` processes with one ``PROMETHEUS_MULTIPROC_DIR`` (as
    uvicorn's workers have): either one's /metrics counts the requests of both (the
    other's within a second), and a process that stopped leaves the in-flight gauge but
    not the counters."""
    home.add("ok", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("ok")})
    config = tmp_path / "hermes-api.yaml"
    config.write_text(yaml.safe_dump({"hermes_home": str(home.root), "expose": ["default", "ok"]}))
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {MULTIPROC_ENV: str(shared)}
    a = serve_process(config, tmp_path / "a.log", env)
    b = serve_process(config, tmp_path / "b.log", env)
    body = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}
    for server, count in ((a, 2), (b, 3)):
        for _ in range(count):
            assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
    labels = {"endpoint": "create_chat_completion", "profile": "ok", "key": "anonymous", "status": "200"}
    for server in (a, b):
        for _ in range(50):  # each worker adds its counts to the files every second (FLUSH_INTERVAL)
            samples = parse(httpx.get(server.url + "/metrics").text)
            if value(samples, "hermes_api_requests_total", **labels) == 5:
                break
            time.sleep(0.1)
        assert value(samples, "hermes_api_requests_total", **labels) == 5
        assert value(samples, "hermes_api_tokens_total", profile="ok", key="anonymous", type="output") == 5
        assert value(samples, "hermes_api_request_duration_seconds_count", endpoint="create_chat_completion",
                     profile="ok") == 5  # fmt: skip
    b.terminate()
    b.process.wait(timeout=15)
    assert "stopped" in b.log(), "its lifespan ended"
    samples = parse(httpx.get(a.url + "/metrics").text)
    assert value(samples, "hermes_api_requests_total", **labels) == 5, "a stopped worker's counts stay"
    assert not list(shared.glob(f"gauge_live*_{b.process.pid}.db")), "its live gauges went"


def test_worker_directory_is_made_for_several_workers_and_removed(monkeypatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with worker_directory(1) as path:
        assert path is None and MULTIPROC_ENV not in os.environ
    with worker_directory(2) as path:
        assert path is not None and Path(path).is_dir()
        assert os.environ[MULTIPROC_ENV] == path
        (Path(path) / "counter_1.db").write_bytes(b"x")
    assert not Path(path).exists() and MULTIPROC_ENV not in os.environ


class _Runner:
    """A turn runner whose stream yields ``batches`` (one list per read), or fails after
    its first batch (``fail_after_first``)."""

    def __init__(self, batches: list[list[dict[str, Any]]], fail_after_first: bool = False):
        self._batches, self.fail_after_first = batches, fail_after_first
        self.left = False

    async def complete(self, turn: Any) -> Any:
        raise NotImplementedError

    def stream(self, turn: Any) -> Any:
        runner = self

        class Chunks:
            async def _batches(self) -> Any:
                for i, batch in enumerate(runner._batches):
                    if i == 1 and runner.fail_after_first:
                        raise UpstreamUnavailableError("the provider went away")
                    yield batch

            def batches(self) -> Any:
                return self._batches()

        class Context:
            async def __aenter__(self) -> Chunks:
                return Chunks()

            async def __aexit__(self, *exc: Any) -> None:
                runner.left = True

        return Context()


def _observe_stream(runner: _Runner, *, by_batch: bool) -> tuple[Exchange, list[Any], BaseException | None]:
    """Run one streamed turn of profile ``alpha`` through ``ObservedTurns`` inside an
    exchange, reading it in batches or one chunk at a time."""
    exchange = Exchange(time.perf_counter())
    turn = Turn(SimpleNamespace(name="alpha"), {"model": "alpha", "stream": True, "messages": []})  # type: ignore[arg-type]
    seen: list[Any] = []

    async def main() -> BaseException | None:
        token = exchange_var.set(exchange)
        try:
            async with ObservedTurns(runner).stream(turn) as chunks:
                if by_batch:
                    async for batch in batches(chunks):
                        seen.append(batch)
                else:
                    async for chunk in chunks:
                        seen.append(chunk)
        except UpstreamUnavailableError as exc:
            return exc
        finally:
            exchange_var.reset(token)
        return None

    return exchange, seen, asyncio.run(main())


@pytest.mark.parametrize("by_batch", [True, False], ids=["in batches", "one by one"])
def test_an_observed_stream_passes_every_chunk_and_notes_its_usage(by_batch: bool) -> None:
    """What the client gets is what the runner streamed, in order; the provider's usage
    chunk (the last) gives the exchange its tokens, and the stream is noted as ended,
    so its usage row and metrics are a complete turn's."""
    parts = [[{"n": 1}, {"n": 2}], [{"n": 3}], [{"n": 4, "usage": {"prompt_tokens": 7, "completion_tokens": 3}}]]
    runner = _Runner(parts)
    exchange, seen, error = _observe_stream(runner, by_batch=by_batch)
    assert error is None and runner.left
    assert seen == (parts if by_batch else [c for part in parts for c in part])
    assert (exchange.input_tokens, exchange.output_tokens, exchange.streaming, exchange.ended) == (7, 3, True, True)
    assert exchange.error is None


def test_an_observed_stream_that_fails_after_its_first_byte_is_noted() -> None:
    """The error that ends a stream after its first byte (the client's answer has begun,
    so no error status can say it) is the exchange's error and upstream error."""
    runner = _Runner([[{"n": 1}], [{"n": 2}]], fail_after_first=True)
    exchange, seen, error = _observe_stream(runner, by_batch=True)
    assert isinstance(error, UpstreamUnavailableError) and seen == [[{"n": 1}]] and runner.left
    assert (exchange.error, exchange.upstream_error, exchange.ended) == ("upstream_unavailable",) * 2 + (False,)
