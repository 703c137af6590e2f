"""Identity headers as routing input, through the app (docs/contract.md §3).

Open WebUI (``ENABLE_FORWARD_USER_INFO_HEADERS=true``) and LibreChat (custom endpoint
``headers:`` with ``{{LIBRECHAT_USER_ID}}``-style placeholders) tell who is chatting.
Keys with ``trusted_identity: true`` let those headers feed ``routes``; for every other
key they are not read at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
import respx
from starlette.testclient import TestClient

from .conftest import completion, digest

USER = [{"role": "user", "content": "hi"}]
KEYS = [
    {"name": "webui", "key_sha256": digest("trusted-key"), "trusted_identity": True, "profiles": ["alpha", "beta"]},
    {"name": "sdk", "key_sha256": digest("plain-key")},
]
ROUTES = [
    {"openwebui_user_email": "alice@example.com", "profile": "alpha"},
    {"openwebui_user_email": "bob@example.com", "openwebui_chat_id": "chat-42", "profile": "beta"},
    {"openwebui_user_email": "mallory@example.com", "profile": "gamma"},
    {"librechat_user_id": "65f0c0ffee0000000000beef", "profile": "beta"},
]
# What Open WebUI 0.12.4 sends with ENABLE_FORWARD_USER_INFO_HEADERS=true.
OPEN_WEBUI = {
    "X-OpenWebUI-User-Id": "0b5e3c1a-7d0f-4c52-9a55-1f6a1c6f9e10",
    "X-OpenWebUI-User-Name": "Bob",
    "X-OpenWebUI-User-Email": "bob@example.com",
    "X-OpenWebUI-User-Role": "user",
    "X-OpenWebUI-Chat-Id": "chat-42",
}


@pytest.fixture
def app_client(make_app, upstream: respx.MockRouter) -> Iterator[TestClient]:
    upstream.post("/chat/completions").respond(json=completion())
    with TestClient(make_app(keys=KEYS, routes=ROUTES), raise_server_exceptions=False) as c:
        yield c


def chat(client: TestClient, key: str, headers: dict[str, str | bytes], model: str = "hermes-agent"):
    return client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}", **headers},
        json={"model": model, "messages": USER},
    )


def upstream_model(upstream: respx.MockRouter) -> str:
    return orjson.loads(upstream.calls.last.request.content)["model"]


@pytest.mark.parametrize(
    ("key", "headers", "model", "profile"),
    [
        pytest.param("trusted-key", OPEN_WEBUI, "hermes-agent", "beta", id="openwebui-email-and-chat"),
        pytest.param(
            "trusted-key",
            {"X-OpenWebUI-User-Email": "alice@example.com"},
            "hermes-agent",
            "alpha",
            id="openwebui-email",
        ),
        pytest.param(
            "trusted-key",
            {**OPEN_WEBUI, "X-OpenWebUI-User-Name": "Zoë".encode()},
            "hermes-agent",
            "beta",
            id="unread-header-may-be-non-ascii",
        ),
        pytest.param(
            "trusted-key", {"X-LibreChat-User-Id": "65f0c0ffee0000000000beef"}, "hermes-agent", "beta", id="librechat"
        ),
        pytest.param("trusted-key", OPEN_WEBUI, "alpha", "alpha", id="explicit-model-wins"),
        pytest.param("plain-key", OPEN_WEBUI, "hermes-agent", "default", id="untrusted-key-ignored"),
        pytest.param(
            "plain-key",
            {"X-LibreChat-User-Id": "{{LIBRECHAT_USER_ID}}"},
            "hermes-agent",
            "default",
            id="untrusted-no-400",
        ),
    ],
)
def test_identity_headers_route(app_client, upstream, key, headers, model, profile) -> None:
    r = chat(app_client, key, headers, model)
    assert r.status_code == 200, r.text
    assert r.headers["x-hermes-profile"] == profile and r.json()["model"] == profile
    assert upstream_model(upstream) == f"model-{profile}"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param("X-LibreChat-User-Id", "{{LIBRECHAT_USER_ID}}", id="unexpanded-librechat"),
        pytest.param("X-OpenWebUI-User-Email", "{{user.email}}", id="unexpanded-other"),
        pytest.param("X-OpenWebUI-User-Email", "zoë@example.com".encode(), id="non-ascii"),
        pytest.param("X-OpenWebUI-Chat-Id", "x" * 257, id="too-long"),
    ],
)
def test_bad_identity_header_is_400_naming_it(app_client, upstream, header: str, value: str) -> None:
    """When a route would read it: the request names no profile (``hermes-agent``) and
    a route matches on the header's field."""
    r = chat(app_client, "trusted-key", {header: value})
    assert r.status_code == 400
    assert r.json()["error"] | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": header.lower(),
        "code": "invalid_header",
    }
    assert header.lower() in r.json()["error"]["message"]
    assert not upstream.calls


LIBRECHAT_WITHOUT_USER = {
    "X-LibreChat-User-Id": "{{LIBRECHAT_USER_ID}}",
    "X-LibreChat-User-Email": "{{LIBRECHAT_USER_EMAIL}}",
    "X-LibreChat-Conversation-Id": "{{LIBRECHAT_BODY_CONVERSATIONID}}",
}


@pytest.mark.parametrize(
    ("headers", "model", "profile"),
    [
        pytest.param(LIBRECHAT_WITHOUT_USER, "alpha", "alpha", id="model-names-the-profile"),
        pytest.param({**LIBRECHAT_WITHOUT_USER, "X-Hermes-Profile": "beta"}, "hermes-agent", "beta", id="header"),
        pytest.param(
            {
                "X-LibreChat-Conversation-Id": "{{LIBRECHAT_BODY_CONVERSATIONID}}",
                "X-OpenWebUI-User-Email": "alice@example.com",
            },
            "hermes-agent",
            "alpha",
            id="no-route-reads-it",
        ),
    ],
)
def test_unexpanded_identity_header_no_route_would_read_is_ignored(app_client, upstream, headers, model, profile):
    """LibreChat's agents path sends the endpoint's ``headers:`` with their templates
    unexpanded. When no route would read a header (the request names its profile, or
    no route matches on that field) it is ignored, not a 400."""
    r = chat(app_client, "trusted-key", headers, model)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == profile and upstream_model(upstream) == f"model-{profile}"


def test_identity_route_outside_the_keys_allowlist_is_403(app_client, upstream) -> None:
    r = chat(app_client, "trusted-key", {"X-OpenWebUI-User-Email": "mallory@example.com"})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "model_not_found")
    assert not upstream.calls


def test_model_list_ignores_identity_headers(app_client) -> None:
    # LibreChat's model fetch may send its header templates unexpanded: the list is not routed.
    headers = {"Authorization": "Bearer trusted-key", "X-LibreChat-User-Id": "{{LIBRECHAT_USER_ID}}", **OPEN_WEBUI}
    r = app_client.get("/v1/models", headers=headers)
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["alpha", "beta"]


def test_stream_is_routed_by_identity(make_app, upstream) -> None:
    upstream.post("/chat/completions").respond(
        content=b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
        b'[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
        headers={"content-type": "text/event-stream"},
    )
    with TestClient(make_app(keys=KEYS, routes=ROUTES)) as c:
        with c.stream(
            "POST",
            "/v1/chat/completions",
            headers={"Authorization": "Bearer trusted-key", "X-OpenWebUI-User-Email": "alice@example.com"},
            json={"model": "", "messages": USER, "stream": True},
        ) as r:
            body = r.read().decode()
    assert r.headers["x-hermes-profile"] == "alpha" and '"model":"alpha"' in body.replace(" ", "")
    assert upstream_model(upstream) == "model-alpha"


@pytest.mark.parametrize(
    "headers",
    [
        # FORWARD_USER_INFO_HEADER_JWT_SECRET set: one signed token instead of the user headers.
        pytest.param({"X-OpenWebUI-User-Jwt": "eyJhbGciOiJIUzI1NiJ9.e30.c2ln"}, id="signed-mode"),
        # FORWARD_USER_INFO_HEADER_USER_EMAIL=X-User-Email: a name hermes-api does not read.
        pytest.param({"X-User-Email": "alice@example.com"}, id="renamed-header"),
    ],
)
def test_identity_open_webui_sends_in_other_modes_is_not_read(make_app, upstream, headers) -> None:
    """docs/clients.md, "What hermes-api does not read": no route matches, no error,
    the chat goes to ``default_profile``."""
    upstream.post("/chat/completions").respond(json=completion())
    keys = [{"name": "webui", "key_sha256": digest("trusted-key"), "trusted_identity": True}]
    with TestClient(make_app(keys=keys, routes=ROUTES)) as client:
        assert chat(client, "trusted-key", {"X-OpenWebUI-User-Email": "alice@example.com"}).json()["model"] == "alpha"
        r = chat(client, "trusted-key", headers)
    assert r.status_code == 200 and r.json()["model"] == "default"
