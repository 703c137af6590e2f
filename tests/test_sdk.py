"""The official OpenAI SDK against hermes-api under uvicorn on a loopback port.

The provider is mocked with respx (an injected transport), so every case is exact; one
case uses the real aiohttp pool against a closed port. The SDK's own retries are off
(``max_retries=0``) so 5xx cases stay fast; the codes are what the SDK exposes.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx
import openai
import pytest
import respx
from openai import OpenAI

from hermes_api.app import create_app

from .conftest import LiveServer, chunks, completion, digest, sse_body

USER = [{"role": "user", "content": "hi"}]
KEYS = [{"name": "sdk", "key_sha256": digest("sdk-key"), "profiles": ["alpha", "beta"]}]


@pytest.fixture
def server(make_app, live: Callable[..., LiveServer]) -> LiveServer:
    return live(make_app(keys=KEYS, max_body_bytes=200_000))


@pytest.fixture
def sdk(server: LiveServer) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="sdk-key", max_retries=0, timeout=10)


def test_models_list_and_retrieve(sdk: OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == ["alpha", "beta"]
    model = sdk.models.retrieve("beta")
    assert (model.id, model.object, model.owned_by) == ("beta", "model", "hermes")


def test_chat_non_stream(sdk: OpenAI, upstream: respx.MockRouter) -> None:
    route = upstream.post("/chat/completions").respond(json=completion("Bonjour"))
    raw = sdk.chat.completions.with_raw_response.create(model="alpha", messages=USER)
    answer = raw.parse()
    assert answer.model == "alpha" and answer.choices[0].message.content == "Bonjour"
    assert answer.usage.total_tokens == 12
    assert raw.headers["x-hermes-profile"] == "alpha" and raw.request_id.startswith("req_")
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-alpha-secret"


def test_chat_stream_with_include_usage(sdk: OpenAI, upstream: respx.MockRouter) -> None:
    upstream.post("/chat/completions").respond(
        content=sse_body(*chunks("streamed words here", usage=True)),
        headers={"content-type": "text/event-stream"},
    )
    stream = sdk.chat.completions.create(
        model="beta", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    received = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text == "streamed words here "
    assert {c.model for c in received} == {"beta"}
    assert received[-1].choices == [] and received[-1].usage.total_tokens == 7
    assert all(c.usage is None for c in received[:-1])


def test_routing_headers_through_the_sdk(server: LiveServer, upstream: respx.MockRouter) -> None:
    upstream.post("/chat/completions").respond(json=completion())
    client = OpenAI(
        base_url=server.url + "/v1", api_key="sdk-key", max_retries=0, default_headers={"X-Hermes-Profile": "beta"}
    )
    assert client.chat.completions.create(model="hermes-agent", messages=USER).model == "beta"
    prefixed = OpenAI(base_url=server.url + "/p/alpha/v1", api_key="sdk-key", max_retries=0)
    assert prefixed.chat.completions.create(model="alpha", messages=USER).model == "alpha"


def raises(exc_type: type[openai.APIStatusError], status: int, code: str | None, call: Callable[[], object]) -> None:
    with pytest.raises(exc_type) as info:
        call()
    assert info.value.status_code == status
    assert info.value.code == code
    assert info.value.request_id  # x-request-id reaches the SDK


def test_client_side_errors(sdk: OpenAI, server: LiveServer) -> None:
    raises(
        openai.BadRequestError,
        400,
        "invalid_json",
        lambda: sdk.post("/chat/completions", cast_to=object, content=b"{not json"),
    )
    raises(
        openai.BadRequestError, 400, "invalid_value", lambda: sdk.chat.completions.create(model="alpha", messages=[])
    )
    raises(
        openai.BadRequestError,
        400,
        "invalid_header",
        lambda: sdk.chat.completions.create(
            model="alpha", messages=USER, extra_headers={"X-Hermes-User-Id": "u" * 300}
        ),
    )
    raises(
        openai.BadRequestError,
        400,
        "profile_conflict",
        lambda: sdk.chat.completions.create(model="alpha", messages=USER, extra_headers={"X-Hermes-Profile": "beta"}),
    )
    wrong = OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    raises(openai.AuthenticationError, 401, "invalid_api_key", lambda: wrong.models.list())
    raises(
        openai.PermissionDeniedError,
        403,
        "model_not_found",
        lambda: sdk.chat.completions.create(model="gamma", messages=USER),
    )
    raises(
        openai.NotFoundError,
        404,
        "model_not_found",
        lambda: sdk.chat.completions.create(model="no-such-profile", messages=USER),
    )
    raises(openai.NotFoundError, 404, "model_not_found", lambda: sdk.models.retrieve("no-such-profile"))
    raises(
        openai.APIStatusError,
        413,
        "request_too_large",
        lambda: sdk.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "x" * 300_000}]),
    )


@pytest.mark.parametrize(
    ("outcome", "exc_type", "status", "code"),
    [
        pytest.param(
            httpx.Response(400, json={"error": {"message": "too long", "code": "context_length_exceeded"}}),
            openai.BadRequestError,
            400,
            "context_length_exceeded",
            id="rejected",
        ),
        pytest.param(
            httpx.Response(429, headers={"retry-after": "0"}),
            openai.RateLimitError,
            429,
            "rate_limit_exceeded",
            id="rate-limited",
        ),
        pytest.param(httpx.Response(401), openai.InternalServerError, 502, "upstream_auth_failed", id="auth"),
        pytest.param(httpx.Response(503), openai.InternalServerError, 502, "upstream_unavailable", id="5xx"),
        pytest.param(
            httpx.Response(200, text="nope"), openai.InternalServerError, 502, "upstream_error", id="bad-answer"
        ),
        pytest.param(httpx.ReadTimeout("slow"), openai.InternalServerError, 504, "upstream_timeout", id="timeout"),
    ],
)
def test_upstream_errors(sdk: OpenAI, upstream: respx.MockRouter, outcome, exc_type, status, code) -> None:
    upstream.post("/chat/completions").mock(side_effect=[outcome])
    raises(exc_type, status, code, lambda: sdk.chat.completions.create(model="alpha", messages=USER))


def test_mid_stream_error_raises_in_the_sdk(sdk: OpenAI, upstream: respx.MockRouter) -> None:
    upstream.post("/chat/completions").respond(content=sse_body(*chunks("cut short")[:2], done=False))
    stream = sdk.chat.completions.create(model="alpha", messages=USER, stream=True)
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert "ended before [DONE]" in info.value.message


def test_real_pool_maps_a_refused_connection_to_502(make_settings, home, live) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket closes
    home.add("alpha", model={"default": "m", "provider": "custom", "base_url": f"http://127.0.0.1:{closed}/v1"})
    server = live(create_app(make_settings(), environ={}))
    client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    raises(
        openai.InternalServerError,
        502,
        "upstream_unavailable",
        lambda: client.chat.completions.create(model="alpha", messages=USER),
    )
    raises(
        openai.InternalServerError,
        502,
        "upstream_unavailable",
        lambda: list(client.chat.completions.create(model="alpha", messages=USER, stream=True)),
    )
