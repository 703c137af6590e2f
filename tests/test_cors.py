"""CORS: off by default; configured origins may send the X-Hermes-* headers and read
X-Hermes-Profile, X-Hermes-Session-Id and x-request-id (Starlette's CORSMiddleware)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import hermes_api

from .conftest import completion, digest

ORIGIN = "https://chat.example.com"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-hermes-profile, x-hermes-chat-id, "
    "x-hermes-user-id, x-hermes-thread-id",
}
KEYS = [{"name": "web", "key_sha256": digest("web-key")}]


@pytest.fixture
def cors_client(make_app):
    app = make_app(keys=KEYS, cors={"allow_origins": [ORIGIN, "http://localhost:3000"]})
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_cors_is_off_by_default(make_app) -> None:
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        r = c.options("/v1/chat/completions", headers=PREFLIGHT)
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert not any(k.startswith("access-control-") for k in r.headers)
        r = c.get("/v1/models", headers={"Origin": ORIGIN})
        assert r.status_code == 200 and not any(k.startswith("access-control-") for k in r.headers)


def test_preflight_allows_the_hermes_headers_without_a_key(cors_client: TestClient) -> None:
    r = cors_client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    requested = {h.strip() for h in PREFLIGHT["Access-Control-Request-Headers"].split(",")}
    assert requested <= allowed
    assert r.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in r.headers
    r = cors_client.options("/p/alpha/v1/models", headers={**PREFLIGHT, "Access-Control-Request-Method": "GET"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({**PREFLIGHT, "Origin": "https://evil.example"}, id="other-origin"),
        pytest.param({**PREFLIGHT, "Access-Control-Request-Headers": "x-evil"}, id="other-header"),
        pytest.param({**PREFLIGHT, "Access-Control-Request-Method": "PUT"}, id="other-method"),
    ],
)
def test_preflight_refuses_what_is_not_configured(cors_client: TestClient, headers: dict[str, str]) -> None:
    r = cors_client.options("/v1/chat/completions", headers=headers)
    assert r.status_code == 400
    if headers["Origin"] != ORIGIN:
        assert "access-control-allow-origin" not in r.headers


def test_actual_requests_expose_the_profile_and_request_id(cors_client: TestClient, upstream) -> None:
    upstream.post("/chat/completions").respond(json=completion())
    r = cors_client.post(
        "/v1/chat/completions",
        headers={"Origin": ORIGIN, "Authorization": "Bearer web-key", "X-Hermes-Profile": "beta"},
        json={"messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"x-hermes-profile", "x-request-id", "retry-after"} <= exposed
    assert r.headers["x-hermes-profile"] == "beta" and r.headers["x-request-id"]
    # Errors carry the CORS headers too, so a browser can read them.
    r = cors_client.get("/v1/models", headers={"Origin": ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ORIGIN
    r = cors_client.get("/v1/models", headers={"Origin": "https://evil.example", "Authorization": "Bearer web-key"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


ROOT = Path(hermes_api.__file__).parent
HERMES_HEADER = re.compile(r"x-hermes-[a-z0-9-]*[a-z0-9]", re.IGNORECASE)


def hermes_headers_named_in(*texts: str) -> set[str]:
    return {name.lower() for text in texts for name in HERMES_HEADER.findall(text)}


def test_every_hermes_header_the_server_reads_or_the_readme_names_is_allowed(cors_client: TestClient) -> None:
    """Every ``X-Hermes-*`` header named anywhere in the server's code (all it reads and
    sends) or in the README may be sent by a browser: a header added later is covered
    without anyone remembering CORS."""
    sources = [p.read_text() for p in ROOT.rglob("*.py")]
    names = hermes_headers_named_in(*sources, (ROOT.parent / "README.md").read_text())
    assert {"x-hermes-profile", "x-hermes-session-id", "x-hermes-chat-id"} <= names  # the scan finds them
    r = cors_client.options(
        "/v1/chat/completions", headers={**PREFLIGHT, "Access-Control-Request-Headers": ", ".join(sorted(names))}
    )
    assert r.status_code == 200, r.text
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert names <= allowed


def test_every_hermes_header_of_an_answer_is_exposed(cors_client: TestClient, upstream) -> None:
    """A browser may read each ``X-Hermes-*`` header the server answers with, the
    session id it echoes included."""
    upstream.post("/chat/completions").respond(json=completion())
    r = cors_client.post(
        "/v1/chat/completions",
        headers={"Origin": ORIGIN, "Authorization": "Bearer web-key", "X-Hermes-Session-Id": "s1"},
        json={"model": "beta", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200
    sent = {k.lower() for k in r.headers if k.lower().startswith("x-hermes-")}
    assert sent == {"x-hermes-profile", "x-hermes-session-id"}
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert sent <= exposed


def test_extra_allowed_headers(make_app) -> None:
    app = make_app(cors={"allow_origins": ["*"], "allow_headers": ["x-stainless-os"]})
    with TestClient(app) as c:
        r = c.options("/v1/models", headers={**PREFLIGHT, "Access-Control-Request-Headers": "x-stainless-os"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
