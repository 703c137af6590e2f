"""No secret in any log line or response: sentinel values as every provider key, every
API key and every ``.env`` value, every error path driven through a real
``hermes-api serve`` at log level debug, then its whole log and every response
(status line, headers, body) searched for each sentinel. Each test runs with the text
log and with ``log_format: json`` (whose request lines name keys, profiles, statuses)."""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path

import httpx
import pytest
import yaml

from .conftest import FakeUpstream, HermesHome, digest, raw_http

FAULTS = [
    "ok",
    "refused",
    "blackhole",
    "hang",
    "status-400",
    "status-429",
    "status-401",
    "status-403",
    "status-500",
    "notjson",
    "cut",
    "reset",
    "stall",
    "deep",
    "leak",
    "leak-500",
    "status-404",
    "forever",
]


def sentinel(kind: str) -> str:
    return f"SENTINEL{kind}{secrets.token_hex(12)}"


@pytest.fixture(params=["text", "json"])
def secret_world(request, fake_upstream: FakeUpstream, home: HermesHome, tmp_path: Path, serve_process):
    upstream_keys = {name: sentinel("UPSTREAM") for name in FAULTS}
    dotenv_values = {name: sentinel("DOTENV") for name in FAULTS}
    for name in FAULTS:
        home.add(
            name,
            model={
                "default": f"m-{name}",
                "provider": "custom",
                "base_url": fake_upstream.base_url(name),
                "key_env": "PROVIDER_KEY",
            },
            env={"PROVIDER_KEY": upstream_keys[name], "OTHER_SECRET": dotenv_values[name]},
        )
    api_keys = {"full": sentinel("APIKEY"), "narrow": sentinel("APIKEY")}
    server_key = sentinel("SERVERKEY")
    config = tmp_path / "hermes-api.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hermes_home": str(home.root),
                "expose": FAULTS,
                "default_profile": "ok",
                "keys": [
                    {"name": "full", "key_env": "FULL_KEY"},
                    {"name": "narrow", "key_sha256": digest(api_keys["narrow"]), "profiles": ["ok"]},
                ],
                "timeouts": {"connect": 5, "read": 5},
                "per_profile": {
                    "forever": {"max_concurrent": 1},
                    **{name: {"timeouts": {"connect": 0.5, "read": 0.5}} for name in ("blackhole", "hang", "stall")},
                },
                "max_header_bytes": 8192,
                "max_body_bytes": 50_000,
                "log_level": "debug",
                "log_format": request.param,
            }
        )
    )
    environ = {"FULL_KEY": api_keys["full"], "API_SERVER_KEY": server_key}
    server = serve_process(config, tmp_path / "serve.log", environ)
    everything = [*upstream_keys.values(), *dotenv_values.values(), *api_keys.values(), server_key]
    return server, api_keys, everything


def readable_log(server) -> str:
    """The server's log as text lines; a JSON log (every line must be one object) as
    uvicorn's text would show its messages, with each request line's fields after it."""
    raw = server.log()
    if not raw.lstrip().startswith("{"):
        return raw
    lines = []
    for line in raw.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= set(record), line
        level = record["level"].upper()
        lines.append(f"{level}:{' ' * (8 - len(level))} {record['message']} {record.get('exception', '')}")
        if record["logger"] == "hermes_api.access":
            assert record["request_id"].startswith("req_") and record["endpoint"], record
            lines.append(json.dumps({k: record[k] for k in ("key", "profile", "endpoint", "status", "error")}))
    return "\n".join(lines)


def transcript(r: httpx.Response) -> str:
    return f"{r.status_code}\n{r.headers}\n{r.text}"


def test_no_secret_in_logs_or_responses(secret_world, fake_upstream: FakeUpstream) -> None:
    server, api_keys, everything = secret_world
    seen: list[str] = []
    auth = {"Authorization": f"Bearer {api_keys['full']}"}
    with httpx.Client(base_url=server.url, timeout=20) as client:

        def chat(body: dict, headers: dict | None = None, **kw) -> None:
            r = client.post("/v1/chat/completions", json=body, headers={**auth, **(headers or {})}, **kw)
            seen.append(transcript(r))

        for name in FAULTS[:-1]:  # "forever" streams for ever: used below
            for stream in (False, True):
                chat({"model": name, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        # The client's own mistakes.
        for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {api_keys['full']}x"}, {}):
            seen.append(transcript(client.get("/v1/models", headers=headers)))
        narrow = {"Authorization": f"Bearer {api_keys['narrow']}"}
        seen.append(transcript(client.get("/v1/models", headers=narrow)))
        chat({"model": "leak", "messages": [{"role": "user", "content": "x"}]}, narrow)  # 403
        chat({"model": "nope", "messages": [{"role": "user", "content": "x"}]})  # 404
        chat({"model": "ok", "messages": []})  # 400
        chat({"model": "ok", "messages": [{"role": "user", "content": "x"}]}, {"X-Hermes-Profile": "leak"})  # conflict
        chat({"model": "ok", "messages": [{"role": "user", "content": "x" * 60_000}]})  # 413
        seen.append(transcript(client.post("/v1/chat/completions", content=b"{bad", headers=auth)))
        seen.append(transcript(client.get("/v1/models", headers={**auth, "X-Pad": "p" * 9000})))  # 431
        seen.append(transcript(client.get("/v1/nowhere", headers=auth)))
        held_body = {"model": "forever", "stream": True, "messages": [{"role": "user", "content": "held"}]}
        with client.stream("POST", "/v1/chat/completions", json=held_body, headers=auth) as held:
            # its one slot (per_profile.forever.max_concurrent) is taken: a 429 of our own
            chat({"model": "forever", "messages": [{"role": "user", "content": "x"}]})
            seen.append(f"{held.status_code}\n{held.headers}")
    status, headers, body = raw_http(server.port, b"GET /v1/models HTTP/1.1\r\nX-Bad: a\x01b\r\n\r\n")
    seen.append(f"{status}\n{headers}\n{body.decode(errors='replace')}")
    assert httpx.get(server.url + "/health").status_code == 200

    server.terminate()
    server.process.wait(timeout=15)
    log = readable_log(server)
    raw = server.log()
    for line in (
        "DEBUG:    profile leak: upstream answered HTTP 400",  # passed on to the client: its business
        # A 5xx from us says why at warning, the provider's words (echoing our key) included.
        "WARNING:  profile leak-500: upstream answered HTTP 500: {",
        "WARNING:  profile status-404: upstream answered HTTP 404: {",
        "WARNING:  profile refused: upstream transport failure ClientConnectorError",
        "WARNING:  profile notjson: upstream answered HTTP 200, not a chat.completion object: <html>",
    ):
        assert line in log, line
    assert log != raw or "429 Too Many" in log  # uvicorn's access line (text only)
    assert "stream failed after the first byte" in log and "Application shutdown complete" in log
    if log != raw:  # the JSON log: one line per request, keys by name
        assert '"endpoint": "create_chat_completion", "status": 429, "error": "concurrency_limit_exceeded"' in log
        assert '"key": "full", "profile": "leak", "endpoint": "create_chat_completion", "status": 400' in log
        assert '"key": "narrow", "profile": "", "endpoint": "create_chat_completion", "status": 403' in log
        assert '"key": "", "profile": "", "endpoint": "none", "status": 401, "error": "invalid_api_key"' in log
    found = {s for s in everything for text in (raw, *seen) if s in text}
    assert found == set(), f"secrets found: {found}"
    assert len(seen) > 40


# Makes the store refuse a write whose input holds "store-fails": a disk or database
# failure provoked in the real server's own database, from outside it.
FAIL_WRITES = """
CREATE TRIGGER test_fail_{table} BEFORE INSERT ON {table} WHEN NEW.{column} LIKE '%store-fails%'
BEGIN SELECT RAISE(ABORT, 'write refused by the test'); END
"""


def test_no_secret_in_responses_api_paths(secret_world, home: HermesHome) -> None:
    """The Responses API's own paths, with the same sentinels: every provider fault
    streamed (``response.failed`` after the first byte) and not; chains, retrieval,
    input items and deletion; other keys' and profiles' ids; invalid bodies and list
    parameters; store failures (a response, a failed response, a chat session turn).
    Nothing secret in the log, in any answer, or in the response store's files."""
    server, api_keys, everything = secret_world
    state = home.root / "hermes-api"
    db = sqlite3.connect(state / "responses.db")
    try:
        db.execute(FAIL_WRITES.format(table="responses", column="input_items"))
        db.execute(FAIL_WRITES.format(table="session_turns", column="messages"))
    finally:
        db.close()
    seen: list[str] = []
    auth = {"Authorization": f"Bearer {api_keys['full']}"}
    narrow = {"Authorization": f"Bearer {api_keys['narrow']}"}
    with httpx.Client(base_url=server.url, timeout=20) as client:

        def call(method: str, path: str, headers: dict | None = None, **kw) -> httpx.Response:
            r = client.request(method, path, headers=headers or auth, **kw)
            seen.append(transcript(r))
            return r

        def create(body: dict, headers: dict | None = None) -> httpx.Response:
            return call("POST", "/v1/responses", headers, json=body)

        failed_streams = set()
        for name in FAULTS[:-1]:
            for stream in (False, True):
                r = create({"model": name, "stream": stream, "input": "hi", "instructions": "be brief"})
                if stream and r.status_code == 200 and "event: response.failed" in r.text:
                    failed_streams.add(name)
        # ("deep" is read, not re-sent, by the Responses stream: it succeeds.)
        assert failed_streams == {"notjson", "cut", "reset", "stall", "leak"}, failed_streams
        first = create({"model": "ok", "input": "remember this"}).json()["id"]
        second = create({"model": "ok", "input": "and this", "previous_response_id": first}).json()["id"]
        create({"model": "ok", "input": "streamed", "previous_response_id": second, "stream": True})
        for path in (f"/v1/responses/{second}", f"/v1/responses/{second}/input_items?order=asc&limit=1"):
            assert call("GET", path).status_code == 200
        theirs = create({"model": "ok", "input": "narrow's own"}, narrow).json()["id"]
        assert call("GET", f"/v1/responses/{theirs}").status_code == 404  # another key's
        assert call("GET", f"/v1/responses/{first}", narrow).status_code == 404
        assert create({"model": "ok", "input": "x", "previous_response_id": theirs}).status_code == 404
        assert call("GET", f"/p/leak/v1/responses/{first}").status_code == 404  # another profile
        assert call("GET", f"/p/leak/v1/responses/{theirs}", narrow).status_code == 403
        assert call("DELETE", f"/v1/responses/{first}").status_code == 200
        assert call("GET", f"/v1/responses/{first}/input_items").status_code == 404
        for body in ({"model": "ok", "input": 5}, {"model": "ok", "input": "x", "background": True}):
            assert create(body).status_code == 400
        deep = b'{"model": "ok", "input": "x", "text": {"x": ' + b"[" * 300 + b"]" * 300 + b"}}"
        assert call("POST", "/v1/responses", content=deep).status_code == 400
        assert call("GET", f"/v1/responses/{second}/input_items?limit=%C2%B2").status_code == 400
        assert create({"model": "ok", "input": "x" * 60_000}).status_code == 413
        assert call("POST", "/v1/responses", content=b"{bad").status_code == 400
        # The store refuses: a 500 before the first byte, response.failed after it.
        assert create({"model": "ok", "input": "store-fails"}).status_code == 500
        r = create({"model": "ok", "input": "store-fails", "stream": True})
        assert '"code":"server_error"' in r.text.split("event: response.failed")[-1]
        r = create({"model": "leak", "input": "store-fails", "stream": True})  # fails, then cannot store that
        assert "event: response.failed" in r.text
        chat = {"model": "ok", "messages": [{"role": "user", "content": "store-fails"}]}
        session = {**auth, "X-Hermes-Session-Id": "s1"}
        assert call("POST", "/v1/chat/completions", session, json=chat).status_code == 500
        r = call("POST", "/v1/chat/completions", session, json={**chat, "stream": True})
        assert '"code":"server_error"' in r.text
    assert httpx.get(server.url + "/health").status_code == 200

    server.terminate()
    server.process.wait(timeout=15)
    log = readable_log(server)
    raw = server.log()
    for line in (
        "responses stream failed after the first byte",
        "could not store response",
        "could not store failed response",
        "could not store the session turn",
        "write refused by the test",
    ):
        assert line in log, line
    stored = b"".join(p.read_bytes() for p in state.iterdir() if p.is_file())
    assert b"remember this" in stored or b"and this" in stored, "the store's files are read"
    found = {s for s in everything for text in (raw, *seen) if s in text}
    found |= {s for s in everything if s.encode() in stored}
    assert found == set(), f"secrets found: {found}"
    assert len(seen) > 40


def test_keys_are_kept_as_digests_and_all_compared(monkeypatch) -> None:
    """``key_sha256`` keys work, and ``identify`` compares the digest with every key
    whichever matches (no early exit), through ``hmac.compare_digest``."""
    import hmac

    from hermes_api import keys as keys_module
    from hermes_api.errors import AuthenticationError
    from hermes_api.keys import KeyRing
    from hermes_api.settings import APIKey

    clear = [sentinel("KEY") for _ in range(5)]
    ring = KeyRing(APIKey(f"k{i}", bytes.fromhex(digest(k))) for i, k in enumerate(clear))
    calls: list[int] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return compare(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", counting)
    for i, key in enumerate(clear):
        calls.clear()
        assert ring.identify(f"Bearer {key}").display_name == f"k{i}"
        assert len(calls) == len(clear)
    calls.clear()
    with pytest.raises(AuthenticationError):
        ring.identify("Bearer " + clear[0][:-1])
    assert len(calls) == len(clear)
    assert not any(k in repr(ring.__dict__) for k in clear), "only digests are kept"


def test_key_sha256_through_the_real_server(home: HermesHome, tmp_path: Path, serve_process) -> None:
    key = sentinel("CLIENTKEY")
    config = tmp_path / "hermes-api.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hermes_home": str(home.root),
                "expose": ["default", "alpha"],
                "keys": [{"name": "hashed", "key_sha256": digest(key), "profiles": ["alpha"]}],
            }
        )
    )
    server = serve_process(config, tmp_path / "serve.log")
    r = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["alpha"]
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}x"}).status_code == 401
    assert key not in config.read_text() and key not in server.log()


def test_a_key_at_the_edge_of_the_logged_excerpt_is_scrubbed_whole(caplog) -> None:
    """The log shows the first 300 characters of a provider's error body; a key the
    provider echoed right at that edge is scrubbed as a whole, not cut first and half shown."""
    from hermes_api.profiles import Profile
    from hermes_api.upstream import status_error

    key = sentinel("UPSTREAM")
    profile = Profile("p", Path("/nonexistent"), "m", "custom", "http://x/v1", api_key=key, persona_source="")
    body = ("😀" * 299 + key).encode()  # 1196 bytes, then the key: the old cut ended inside it
    with caplog.at_level("WARNING", logger="hermes_api"):
        status_error(500, body, httpx.Headers(), profile)
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.endswith("😀" * 299 + "*…"), message[-20:]


def reachable_text(root: object) -> str:
    """Every str and bytes reachable from ``root`` through containers and instances
    (not through modules, classes or functions), joined: what the object keeps alive."""
    import gc
    import types

    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    seen: set[int] = set()
    texts: list[str] = []
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            texts.append(obj)
        elif isinstance(obj, (bytes, bytearray)):
            texts.append(bytes(obj).decode("latin-1"))
        else:
            todo.extend(gc.get_referents(obj))
    return "\n".join(texts)


def test_the_upstream_client_keeps_no_rotated_provider_key() -> None:
    """A profile's key changes (rotated in its ``.env``; the registry reloads the
    profile): the pooled client used by every profile keeps no old key in memory."""
    import asyncio

    from hermes_api.profiles import Profile
    from hermes_api.settings import Settings
    from hermes_api.upstream import Upstream

    from .conftest import completion

    keys = [sentinel("UPSTREAM") for _ in range(3)]

    async def rotate() -> Upstream:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, json=completion()))
        upstream = Upstream(Settings(Path("/nonexistent"), Path("/nonexistent")), transport=transport)
        for key in keys:
            profile = Profile("p", Path("/nonexistent"), "m", "custom", "http://x/v1", api_key=key, persona_source="")
            await upstream.create_chat_completion(profile, {"messages": []})
        return upstream

    assert keys[0] in reachable_text({"a": [(keys[0].encode(),)]})  # the walk looks inside containers
    held = reachable_text(asyncio.run(rotate()))
    assert [k for k in keys[:-1] if k in held] == []
