"""Limits, through real servers: body and header sizes, concurrent upstream requests,
and keep-alive comments on silent streams."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from hermes_api.app import create_app

from .conftest import FakeUpstream, HermesHome, LiveServer, ServeProcess

ENVELOPE = {"message", "type", "param", "code"}


def write_config(tmp_path: Path, home: HermesHome, **raw: Any) -> Path:
    raw.setdefault("hermes_home", str(home.root))
    raw.setdefault("expose", "*")
    config = tmp_path / "hermes-api.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def raw_exchange(port: int, head: bytes, pieces: Iterable[bytes] = ()) -> tuple[bytes, int]:
    """Send ``head`` then ``pieces`` until the server answers or closes; the bytes it
    answered (until it closed, 5 s at most) and how many bytes were sent in all."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            for piece in (head, *pieces):
                s.sendall(piece)
                sent += len(piece)
                s.settimeout(0.001 if sent < 4 * 1024 * 1024 else 5)
                try:
                    first = s.recv(65536)
                except TimeoutError:
                    continue
                s.settimeout(5)
                return first + _rest(s), sent
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(5)
        try:
            return _rest(s), sent
        except ConnectionResetError:
            return b"", sent


def _rest(s: socket.socket) -> bytes:
    out = b""
    while data := s.recv(65536):
        out += data
    return out


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


@pytest.fixture
def limited_server(tmp_path: Path, home: HermesHome, serve_process) -> ServeProcess:
    config = write_config(tmp_path, home, max_header_bytes=16384, max_body_bytes=1_000_000)
    return serve_process(config, tmp_path / "serve.log")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param(b"X-Pad: " + b"a" * 10_000 + b"\r\n", 200, id="10k-header-ok"),
        pytest.param(b"X-Pad: " + b"a" * 20_000 + b"\r\n", 431, id="one-20k-header"),
        pytest.param(b"".join(b"X-P%d: %s\r\n" % (i, b"b" * 90) for i in range(200)), 431, id="200-small-headers"),
        pytest.param(b"", 431, id="20k-url"),
    ],
)
def test_header_size_limit(limited_server: ServeProcess, headers: bytes, status: int) -> None:
    path = b"/health" if headers else b"/health?" + b"q" * 20_000
    raw, _ = raw_exchange(
        limited_server.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n"
    )
    got, response_headers, body = split_response(raw)
    assert got == status
    if status == 431:
        assert response_headers["connection"] == "close"
        error = orjson.loads(body)["error"]
        assert set(error) == ENVELOPE and error["code"] == "request_headers_too_large"
    assert httpx.get(limited_server.url + "/health").status_code == 200, "the server goes on serving"


def test_an_endless_header_is_refused_early(limited_server: ServeProcess) -> None:
    """64 KiB pieces of one header that never ends: the server answers 431 and closes
    long before the client has sent 4 MiB, so it never buffered more than that."""
    pieces = (b"a" * 65536 for _ in range(64))
    raw, sent = raw_exchange(limited_server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ", pieces)
    assert sent < 4 * 1024 * 1024, f"sent {sent} bytes before the server refused"
    if raw:  # the 431 may be lost to a reset when the server closes while we still send
        assert split_response(raw)[0] == 431
    assert "larger than 16384 bytes" in limited_server.log()
    assert httpx.get(limited_server.url + "/health").status_code == 200


def test_a_large_body_behind_small_headers_is_not_taken_for_headers(limited_server: ServeProcess) -> None:
    """A 900 kB body arrives in reads far over the header limit: still a normal request."""
    body = orjson.dumps({"model": "no-such", "messages": [{"role": "user", "content": "x" * 900_000}]})
    r = httpx.post(limited_server.url + "/v1/chat/completions", content=body)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
    with httpx.Client(base_url=limited_server.url) as client:  # and again on a kept-alive connection
        assert client.post("/v1/chat/completions", content=body).status_code == 404
        assert client.get("/health", headers={"X-Pad": "a" * 20_000}).status_code == 431


def test_body_size_limit_through_the_real_server(tmp_path: Path, home: HermesHome, serve_process) -> None:
    server = serve_process(write_config(tmp_path, home, max_body_bytes=1000), tmp_path / "serve.log")
    small = {"model": "no-such", "messages": [{"role": "user", "content": "x" * 800}]}
    assert httpx.post(server.url + "/v1/chat/completions", json=small).status_code == 404
    big = {"model": "no-such", "messages": [{"role": "user", "content": "x" * 1200}]}
    r = httpx.post(server.url + "/v1/chat/completions", json=big)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while read
        data = orjson.dumps(big)
        yield from (data[i : i + 100] for i in range(0, len(data), 100))

    r = httpx.post(server.url + "/v1/chat/completions", content=chunked())
    assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large")
    assert httpx.get(server.url + "/health").status_code == 200


# -- concurrent upstream requests --------------------------------------------------------


@pytest.fixture
def capped(fake_upstream: FakeUpstream, home: HermesHome, make_settings, live) -> LiveServer:
    """Profiles whose provider streams one chunk and then holds the stream open."""
    for name in ("a", "b", "c", "vip"):
        home.add(name, model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("stall")})
    home.add("quick", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("ok")})
    settings = make_settings(
        expose=["default", "a", "b", "c", "vip", "quick"],
        max_concurrent=4,
        max_concurrent_per_profile=2,
        per_profile={"vip": {"max_concurrent": 1}},
    )
    return live(create_app(settings, environ={}))


class HeldStream:
    """A streamed chat (or Responses API) request whose first chunk has arrived, kept
    open until closed."""

    def __init__(self, client: httpx.Client, profile: str, *, responses: bool = False) -> None:
        body: dict[str, Any] = {"model": profile, "stream": True}
        if responses:
            body["input"] = "hold"
        else:
            body["messages"] = [{"role": "user", "content": "hold"}]
        self._cm = client.stream("POST", "/v1/responses" if responses else "/v1/chat/completions", json=body)
        self.response = self._cm.__enter__()
        assert self.response.status_code == 200
        # Keep the iterator: closing it (as garbage) would close the connection.
        self.lines = self.response.iter_lines()
        for line in self.lines:
            if line.startswith("data: "):
                break

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def refused(client: httpx.Client, profile: str, *, responses: bool = False) -> dict[str, Any]:
    if responses:
        r = client.post("/v1/responses", json={"model": profile, "input": "x", "stream": True})
    else:
        r = client.post("/v1/chat/completions", json={"model": profile, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
    assert r.headers["x-hermes-profile"] == profile
    error = r.json()["error"]
    assert set(error) == ENVELOPE and (error["type"], error["code"]) == (
        "rate_limit_error",
        "concurrency_limit_exceeded",
    )
    return error


def test_concurrency_caps_per_profile_and_server_wide(capped: LiveServer) -> None:
    with httpx.Client(base_url=capped.url, timeout=10, limits=httpx.Limits(max_connections=20)) as client:
        held = [HeldStream(client, "a"), HeldStream(client, "a")]
        assert "`a` is at its limit of 2" in refused(client, "a")["message"]
        held.append(HeldStream(client, "vip"))
        assert "`vip` is at its limit of 1" in refused(client, "vip")["message"]
        held.append(HeldStream(client, "b"))  # 4 in flight: the server's cap
        assert "server is at its limit of 4" in refused(client, "c")["message"]
        held.pop(0).close()  # a slot frees once the stream is abandoned
        for _ in range(100):
            r = client.post(
                "/v1/chat/completions", json={"model": "quick", "messages": [{"role": "user", "content": "x"}]}
            )
            if r.status_code == 200:
                break
        assert r.status_code == 200, "the abandoned stream's slot must come back"
        for stream in held:
            stream.close()


def test_responses_requests_share_the_concurrency_caps(capped: LiveServer) -> None:
    """A Responses API stream holds a slot like a chat stream: the caps count both, a
    Responses request over them is the same 429, and an abandoned one gives its slot back."""
    with httpx.Client(base_url=capped.url, timeout=10, limits=httpx.Limits(max_connections=20)) as client:
        held = [HeldStream(client, "a", responses=True), HeldStream(client, "a")]
        assert "`a` is at its limit of 2" in refused(client, "a", responses=True)["message"]
        held += [HeldStream(client, "b", responses=True), HeldStream(client, "c", responses=True)]
        assert "server is at its limit of 4" in refused(client, "quick", responses=True)["message"]
        assert "server is at its limit of 4" in refused(client, "quick")["message"]
        held.pop(0).close()
        for _ in range(100):
            r = client.post("/v1/responses", json={"model": "quick", "input": "x"})
            if r.status_code == 200:
                break
        assert r.status_code == 200, "the abandoned Responses stream's slot must come back"
        for stream in held:
            stream.close()


# -- keep-alive comments -------------------------------------------------------------------


def test_silent_upstream_gets_ping_comments_and_the_stream_survives(
    fake_upstream: FakeUpstream, home: HermesHome, make_settings, live
) -> None:
    """The provider is silent for 1.5 s mid-stream; with sse_keepalive 0.2 s the client
    sees ``: ping`` comments in the silence, then the rest of the answer and [DONE]."""
    home.add("quiet", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("slow-1500")})
    server = live(create_app(make_settings(expose=["default", "quiet"], sse_keepalive=0.2), environ={}))
    body = {"model": "quiet", "stream": True, "messages": [{"role": "user", "content": "late"}]}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=20)
    lines = [line for line in r.text.splitlines() if line]
    pings = [line for line in lines if line.startswith(": ping")]
    datas = [line[6:] for line in lines if line.startswith("data: ")]
    first_ping = lines.index(pings[0]) if pings else -1
    assert len(pings) >= 2, lines
    assert lines.index(next(line for line in lines if "first" in line)) < first_ping, "pings come in the silence"
    assert datas[-1] == "[DONE]"
    text = "".join(orjson.loads(d)["choices"][0]["delta"]["content"] for d in datas[:-1])
    assert text == "first ok late"


def test_silent_upstream_gets_ping_comments_in_a_responses_stream(
    fake_upstream: FakeUpstream, home: HermesHome, make_settings, live
) -> None:
    """The same silence in a Responses API stream: ``: ping`` comments between the
    events, then the rest and ``response.completed``."""
    home.add("quiet", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("slow-1500")})
    server = live(create_app(make_settings(expose=["default", "quiet"], sse_keepalive=0.2), environ={}))
    body = {"model": "quiet", "stream": True, "input": "late"}
    r = httpx.post(server.url + "/v1/responses", json=body, timeout=20)
    lines = [line for line in r.text.splitlines() if line]
    pings = [i for i, line in enumerate(lines) if line.startswith(": ping")]
    events = [orjson.loads(line[6:]) for line in lines if line.startswith("data: ")]
    first_delta = next(i for i, line in enumerate(lines) if "response.output_text.delta" in line)
    assert len(pings) >= 2 and pings[0] > first_delta, lines
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "first ok late"
