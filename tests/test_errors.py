"""The error table of docs/contract.md §5: status, type, code and all four envelope keys."""

from __future__ import annotations

import httpx
import pytest
from starlette.testclient import TestClient

from .conftest import completion, digest

USER = [{"role": "user", "content": "hi"}]
ENVELOPE = {"message", "type", "param", "code"}


@pytest.fixture
def keyed(make_app):
    keys = [{"name": "k", "key_sha256": digest("good-key"), "profiles": ["alpha"]}]
    with TestClient(make_app(keys=keys), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = "Bearer good-key"
        yield c


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic Z29vZC1rZXk="},
        {"Authorization": "Bearer "},
        {"Authorization": "good-key"},
    ],
    ids=["missing", "wrong", "basic", "empty", "no-scheme"],
)
def test_401_for_missing_or_wrong_key(make_app, headers) -> None:
    keys = [{"name": "k", "key_sha256": digest("good-key")}]
    with TestClient(make_app(keys=keys)) as c:
        for path in ("/v1/models", "/v1/models/alpha", "/p/alpha/v1/models", "/v1/nowhere"):
            r = c.get(path, headers=headers)
            assert r.status_code == 401, path
            assert r.json()["error"] | {"message": ""} == {
                "message": "",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        chat = c.post("/v1/chat/completions", headers=headers, json={"model": "alpha", "messages": USER})
        assert chat.status_code == 401
        assert c.get("/health", headers=headers).json() == {"status": "ok"}


def test_api_server_key_from_environment(make_app) -> None:
    with TestClient(make_app(environ={"API_SERVER_KEY": "hermes-key"})) as c:
        assert c.get("/v1/models").status_code == 401
        r = c.get("/v1/models", headers={"Authorization": "Bearer hermes-key"})
        assert len(r.json()["data"]) == 4


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        pytest.param("GET", "/v1/nowhere", 404, "not_found", id="unknown-path"),
        pytest.param("DELETE", "/v1/models", 405, "method_not_allowed", id="wrong-method"),
        pytest.param("GET", "/v1/chat/completions", 405, "method_not_allowed", id="get-chat"),
    ],
)
def test_routing_errors_use_the_envelope(keyed, method, path, status, code) -> None:
    r = keyed.request(method, path)
    assert r.status_code == status and set(r.json()["error"]) == ENVELOPE
    assert r.json()["error"]["code"] == code and "x-request-id" in r.headers


def test_403_and_404_for_chat(keyed, upstream) -> None:
    route = upstream.post("/chat/completions").respond(json=completion())
    r = keyed.post("/v1/chat/completions", json={"model": "beta", "messages": USER})
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["param"]) == (403, "model_not_found", "model")
    r = keyed.post("/v1/chat/completions", json={"model": "zeta", "messages": USER})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
    r = keyed.post("/p/beta/v1/chat/completions", json={"messages": USER})
    assert r.status_code == 403, "the prefix route must not bypass the allowlist"
    assert not route.called


def test_bad_header_and_conflict(keyed) -> None:
    r = keyed.post(
        "/v1/chat/completions", headers={"X-Hermes-Chat-Id": "x" * 300}, json={"model": "alpha", "messages": USER}
    )
    assert r.status_code == 400 and r.json()["error"] | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": "x-hermes-chat-id",
        "code": "invalid_header",
    }
    r = keyed.post(
        "/v1/chat/completions", headers={"X-Hermes-Profile": "alpha"}, json={"model": "beta", "messages": USER}
    )
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["param"]) == (400, "profile_conflict", "model")


REJECTION = {
    "error": {
        "message": "context too long",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
UPSTREAM_CASES = [
    pytest.param(
        httpx.Response(
            400,
            json=REJECTION,
        ),
        400,
        "invalid_request_error",
        "context_length_exceeded",
        id="upstream-400",
    ),
    pytest.param(
        httpx.Response(422, json={"error": "bad schema"}),
        422,
        "invalid_request_error",
        None,
        id="upstream-422-string-error",
    ),
    pytest.param(httpx.Response(413, text="too big"), 413, "invalid_request_error", None, id="upstream-413"),
    pytest.param(
        httpx.Response(429, headers={"retry-after": "7"}),
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
        id="upstream-429",
    ),
    pytest.param(httpx.Response(401), 502, "upstream_error", "upstream_auth_failed", id="upstream-401"),
    pytest.param(httpx.Response(403), 502, "upstream_error", "upstream_auth_failed", id="upstream-403"),
    pytest.param(httpx.Response(500), 502, "upstream_error", "upstream_unavailable", id="upstream-500"),
    pytest.param(httpx.Response(404), 502, "upstream_error", "upstream_misconfigured", id="upstream-404"),
    pytest.param(httpx.Response(405), 502, "upstream_error", "upstream_misconfigured", id="upstream-405"),
    pytest.param(httpx.Response(410), 502, "upstream_error", "upstream_misconfigured", id="upstream-410"),
    pytest.param(
        httpx.Response(301, headers={"location": "https://upstream.test/v1/chat/completions"}),
        502,
        "upstream_error",
        "upstream_misconfigured",
        id="upstream-redirect",
    ),
    pytest.param(httpx.Response(200, text="<html>"), 502, "upstream_error", "upstream_error", id="not-json"),
    pytest.param(
        httpx.Response(200, json={"no": "choices"}), 502, "upstream_error", "upstream_error", id="not-a-completion"
    ),
    pytest.param(httpx.ConnectError("refused"), 502, "upstream_error", "upstream_unavailable", id="refused"),
    pytest.param(httpx.ConnectTimeout("slow"), 504, "upstream_error", "upstream_timeout", id="connect-timeout"),
    pytest.param(httpx.ReadTimeout("slow"), 504, "upstream_error", "upstream_timeout", id="read-timeout"),
    pytest.param(httpx.Response(504), 504, "upstream_error", "upstream_timeout", id="upstream-504"),
]


def _with_stream_flag(cases):
    """Each case non-streamed, and streamed too unless the provider said 200 (a 200
    stream fails after the first byte: test_chat covers that)."""
    for case in cases:
        yield pytest.param(*case.values, False, id=f"plain-{case.id}")
        outcome = case.values[0]
        if not (isinstance(outcome, httpx.Response) and outcome.status_code == 200):
            yield pytest.param(*case.values, True, id=f"stream-{case.id}")


@pytest.mark.parametrize(("outcome", "status", "type_", "code", "stream"), list(_with_stream_flag(UPSTREAM_CASES)))
def test_upstream_failures_before_the_first_byte(keyed, upstream, outcome, status, type_, code, stream) -> None:
    upstream.post("/chat/completions").mock(side_effect=[outcome])
    r = keyed.post("/v1/chat/completions", json={"model": "alpha", "messages": USER, "stream": stream})
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == ENVELOPE and (error["type"], error["code"]) == (type_, code)
    assert r.headers["x-hermes-profile"] == "alpha"
    if status == 429:
        assert r.headers["retry-after"] == "7"
    # Retrying cannot fix a wrong key, base_url or model: the OpenAI SDK is told not to.
    not_retried = code in ("upstream_auth_failed", "upstream_misconfigured")
    assert r.headers.get("x-should-retry") == ("false" if not_retried else None)


def test_upstream_rejection_keeps_message_and_param(keyed, upstream) -> None:
    upstream.post("/chat/completions").respond(
        400,
        json=REJECTION,
    )
    error = keyed.post("/v1/chat/completions", json={"model": "alpha", "messages": USER}).json()["error"]
    assert error == REJECTION["error"]  # message, type, param and code all pass on


def test_echoed_upstream_key_is_scrubbed(keyed, upstream) -> None:
    upstream.post("/chat/completions").respond(400, json={"error": {"message": "bad key sk-alpha-secret here"}})
    r = keyed.post("/v1/chat/completions", json={"model": "alpha", "messages": USER})
    assert "sk-alpha-secret" not in r.text and "***" in r.json()["error"]["message"]


def test_unexpected_failure_is_a_500_envelope_without_details(make_app, monkeypatch) -> None:
    from hermes_api.endpoints import models

    def boom(profile):
        raise RuntimeError("internal detail sk-secret")

    monkeypatch.setattr(models, "model_object", boom)
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        r = c.get("/v1/models")
    assert r.status_code == 500 and "sk-secret" not in r.text
    assert r.json()["error"]["code"] == "server_error" and r.headers["x-request-id"]


def test_client_request_id_is_echoed_when_sane(client) -> None:
    assert client.get("/health", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    rid = client.get("/health", headers={"x-request-id": "bad id\twith tab"}).headers["x-request-id"]
    assert rid.startswith("req_")


def test_non_ascii_key_matches_its_utf8_bytes(make_app, live) -> None:
    # Over a real socket: Starlette's TestClient would re-encode the header bytes.
    server = live(make_app(keys=[{"name": "k", "key_sha256": digest("clé-secrète")}]))
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/v1/models", headers={"Authorization": "Bearer clé-secrète".encode()}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": b"Bearer cl\xe9-secr\xe8te"}).status_code == 401
