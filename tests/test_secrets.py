"""No secret in any log line or response: sentinel values as every provider key, every
API key and every ``.env`` value, every error path driven through a real
``hermes-api serve`` at log level debug, then its whole log and every response
(status line, headers, body) searched for each sentinel."""

from __future__ import annotations

import secrets
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
    "forever",
]


def sentinel(kind: str) -> str:
    return f"SENTINEL{kind}{secrets.token_hex(12)}"


@pytest.fixture
def secret_world(fake_upstream: FakeUpstream, home: HermesHome, tmp_path: Path, serve_process):
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
            }
        )
    )
    environ = {"FULL_KEY": api_keys["full"], "API_SERVER_KEY": server_key}
    server = serve_process(config, tmp_path / "serve.log", environ)
    everything = [*upstream_keys.values(), *dotenv_values.values(), *api_keys.values(), server_key]
    return server, api_keys, everything


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
    log = server.log()
    for line in ("DEBUG:    profile leak: upstream answered HTTP 400", "upstream transport failure", "429 Too Many"):
        assert line in log, line
    assert "stream failed after the first byte" in log and "Application shutdown complete" in log
    found = {s for s in everything for text in (log, *seen) if s in text}
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
