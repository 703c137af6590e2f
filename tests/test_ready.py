"""``GET /ready`` (readiness) beside ``/health`` (liveness), and the JSON request log."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.testclient import TestClient

from hermes_api.app import create_app
from hermes_api.shutdown import Drain
from hermes_api.store import open_store

from .conftest import FakeUpstream, HermesHome, digest

KEY = "sk-ready-SECRET-value"
READY = {"status": "ready", "store": "ok", "profiles": "loaded", "draining": False}


def test_ready_needs_no_key_and_says_ready(make_app) -> None:
    with TestClient(make_app(keys=[{"name": "k", "key_sha256": digest(KEY)}])) as client:
        r = client.get("/ready")
        assert (r.status_code, r.json()) == (200, READY)
        assert client.get("/health").json() == {"status": "ok"}


def test_ready_flips_while_draining(make_settings) -> None:
    drain = Drain(grace=30)
    with TestClient(create_app(make_settings(), environ={}, drain=drain)) as client:
        assert client.get("/ready").status_code == 200
        drain.begin()  # what SIGTERM does: the grace period starts
        for _ in range(200):
            r = client.get("/ready")
            if r.status_code == 503:
                break
            time.sleep(0.01)
        assert (r.status_code, r.json()) == (503, {**READY, "status": "not_ready", "draining": True})
        assert client.get("/health").status_code == 200, "still alive: turns in flight may finish"


def test_not_ready_when_the_store_does_not_answer(make_settings) -> None:
    async def broken_store(settings):
        store = await open_store(settings)

        async def get_response(*args, **kwargs):
            raise ConnectionError("database at db.internal:5432 is down")

        store.get_response = get_response
        return store

    with TestClient(create_app(make_settings(), environ={}, store=broken_store)) as client:
        r = client.get("/ready")
    assert (r.status_code, r.json()) == (503, {**READY, "status": "not_ready", "store": "unreachable"})
    assert "db.internal" not in r.text


def test_not_ready_without_a_served_profile(home: HermesHome, make_settings) -> None:
    home.add("alpha", model={"default": "claude", "provider": "anthropic"})  # not an OpenAI wire: not served
    with TestClient(create_app(make_settings(expose=["alpha"], default_profile="alpha"), environ={})) as client:
        r = client.get("/ready")
    assert (r.status_code, r.json()) == (503, {**READY, "status": "not_ready", "profiles": "none"})


@pytest.fixture(params=[1, 2], ids=["serve", "workers-2"])
def json_logged(request, fake_upstream: FakeUpstream, home: HermesHome, tmp_path: Path, serve_process):
    """A server with ``log_format: json``: alone, or as ``serve --workers 2``, whose
    workers must log as a lone server does."""
    home.add("ok", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("ok")})
    home.add("down", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("status-503")})
    config = tmp_path / "hermes-api.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hermes_home": str(home.root),
                "expose": ["default", "ok", "down"],
                "keys": [{"name": "webui", "key_env": "WEBUI_KEY"}],
                "log_format": "json",
            }
        )
    )
    return serve_process(config, tmp_path / "serve.log", {"WEBUI_KEY": KEY}, args=("--workers", str(request.param)))


def test_json_log_has_one_line_per_request_with_its_fields(json_logged) -> None:
    server = json_logged
    auth = {"Authorization": f"Bearer {KEY}"}
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=server.url, headers=auth, timeout=10) as client:
        ok = client.post("/v1/chat/completions", json={**chat, "model": "ok"}, headers={"x-request-id": "my-trace-1"})
        down = client.post("/v1/responses", json={"model": "down", "input": "hi"})
        missing = client.post("/v1/chat/completions", json={**chat, "model": "nope"})
    assert (ok.status_code, down.status_code, missing.status_code) == (200, 502, 404)
    server.terminate()
    server.process.wait(timeout=15)
    records = [json.loads(line) for line in server.log().splitlines()]  # every line is JSON
    requests = {r["request_id"]: r for r in records if r["logger"] == "hermes_api.access" and r["path"] != "/health"}
    assert len(requests) == 3, "one line per request"
    line = requests["my-trace-1"]
    assert line == {
        **{k: line[k] for k in ("time", "duration_s", "ttfb_s")},
        "level": "info",
        "logger": "hermes_api.access",
        "message": "request",
        "request_id": "my-trace-1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "endpoint": "create_chat_completion",
        "key": "webui",
        "profile": "ok",
        "status": 200,
        "stream": False,
        "input_tokens": 1,
        "output_tokens": 1,
        "upstream_status": 200,
        "upstream_error": None,
        "error": None,
        "delegated_by": None,
    }
    assert 0 < line["ttfb_s"] <= line["duration_s"]
    failed = requests[down.headers["x-request-id"]]
    assert (failed["endpoint"], failed["profile"], failed["status"]) == ("create_response", "down", 502)
    assert (failed["upstream_status"], failed["upstream_error"], failed["error"]) == (
        503,
        "upstream_unavailable",
        "upstream_unavailable",
    )
    unknown = requests[missing.headers["x-request-id"]]
    assert (unknown["profile"], unknown["status"], unknown["error"]) == ("", 404, "model_not_found")
    assert all(KEY not in json.dumps(r) for r in records)
    assert not any("uvicorn.access" == r["logger"] for r in records), "ours replaces uvicorn's access line"


def test_an_app_made_to_serve_freezes_what_its_startup_made(make_settings, upstream) -> None:
    """``serve``, its workers and ``create_app_from_env`` start the app with
    ``freeze_startup``: once started, what startup made is in the garbage collector's
    permanent generation, so full collections under load no longer scan it. An app made
    without it (as tests make many) freezes nothing."""
    gc.unfreeze()
    try:
        with TestClient(create_app(make_settings())) as c:
            assert c.get("/ready").status_code == 200 and gc.get_freeze_count() == 0
        with TestClient(create_app(make_settings(), freeze_startup=True)) as c:
            assert c.get("/ready").status_code == 200 and gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
