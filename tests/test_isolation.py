"""Concurrency isolation: hundreds of interleaved requests over several profiles.

hermes-api runs under uvicorn with its real aiohttp pool; the upstream is a real
Starlette server on loopback that records what each call carried and answers with it,
after a random delay so requests for different profiles overlap. Zero answers or
upstream calls may carry another profile's persona, memory, secret or model, and the
profile bound in the ContextVar must be the request's own, inside streamed bodies too.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from hermes_api.app import create_app
from hermes_api.context import current_profile
from hermes_api.profiles import Profile
from hermes_api.turns import UpstreamTurns

from .conftest import FakeUpstream, HermesHome, digest

PROFILES = [f"p{i}" for i in range(6)]
REQUESTS = 360


def recording_upstream(calls: list[dict]) -> Starlette:
    async def chat(request: Request):
        body = orjson.loads(await request.body())
        seen = {
            "auth": request.headers.get("authorization"),
            "model": body["model"],
            "system": body["messages"][0]["content"],
            "tag": body["messages"][-1]["content"],
        }
        calls.append(seen)
        await asyncio.sleep(random.uniform(0, 0.02))
        text = orjson.dumps(seen).decode()
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                }
            )

        async def events() -> AsyncIterator[bytes]:
            for part in (text[: len(text) // 2], text[len(text) // 2 :]):
                chunk = {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": body["model"],
                    "choices": [{"index": 0, "delta": {"content": part}, "finish_reason": None}],
                }
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                await asyncio.sleep(random.uniform(0, 0.01))
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


class CheckingTurns(UpstreamTurns):
    """The default runner, asserting the bound profile at every step of every turn."""

    mismatches: list[str] = []

    def _check(self, profile: Profile) -> None:
        if current_profile() is not profile:
            self.mismatches.append(profile.name)

    async def complete(self, profile, request):
        self._check(profile)
        answer = await super().complete(profile, request)
        self._check(profile)
        return answer

    def stream(self, profile, request):
        inner = super().stream(profile, request)
        check = self._check

        class Checked:
            async def __aenter__(self):
                chunks = await inner.__aenter__()

                async def iterate():
                    async for chunk in chunks:
                        check(profile)  # runs while the response body is being sent
                        yield chunk

                return iterate()

            async def __aexit__(self, *exc):
                return await inner.__aexit__(*exc)

        return Checked()


def test_interleaved_requests_never_cross_profiles(tmp_path, live, make_settings, home: HermesHome) -> None:
    calls: list[dict] = []
    up = live(recording_upstream(calls))
    for name in PROFILES:
        home.add(
            name,
            model={"default": f"model-{name}", "provider": "custom", "base_url": up.url + "/v1", "key_env": "K"},
            env={"K": f"sk-secret-{name}"},
            soul=f"SOUL-OF-{name}",
            memory=[f"MEMORY-OF-{name}"],
            user=[f"USER-OF-{name}"],
        )
    settings = make_settings(
        expose=PROFILES, default_profile="p0", routes=[{"chat_id": f"room-{n}", "profile": n} for n in PROFILES]
    )
    CheckingTurns.mismatches = []
    server = live(create_app(settings, environ={}, turn_runner=CheckingTurns))

    async def one(client: httpx.AsyncClient, i: int) -> tuple[str, str, dict]:
        name = random.choice(PROFILES)
        how = i % 4
        url, headers, body = "/v1/chat/completions", {}, {"messages": [{"role": "user", "content": f"tag-{i}"}]}
        if how == 0:
            body["model"] = name
        elif how == 1:
            headers["X-Hermes-Profile"] = name
        elif how == 2:
            url = f"/p/{name}/v1/chat/completions"
        else:
            headers["X-Hermes-Chat-Id"] = f"room-{name}"
        body["stream"] = i % 2 == 0
        r = await client.post(url, json=body, headers=headers)
        assert r.status_code == 200, r.text
        if body["stream"]:
            datas = [
                orjson.loads(line[6:])
                for line in r.text.splitlines()
                if line.startswith("data: ") and line != "data: [DONE]"
            ]
            models = {d["model"] for d in datas}
            text = "".join(d["choices"][0]["delta"].get("content", "") for d in datas)
        else:
            models = {r.json()["model"]}
            text = r.json()["choices"][0]["message"]["content"]
        assert models == {name} and r.headers["x-hermes-profile"] == name
        return name, f"tag-{i}", orjson.loads(text)

    async def run_all() -> list:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
            return await asyncio.gather(*(one(client, i) for i in range(REQUESTS)))

    results = asyncio.run(run_all())
    crossed = 0
    for name, tag, seen in results:
        others = [n for n in PROFILES if n != name]
        ok = (
            seen["tag"] == tag
            and seen["auth"] == f"Bearer sk-secret-{name}"
            and seen["model"] == f"model-{name}"
            and f"SOUL-OF-{name}" in seen["system"]
            and f"MEMORY-OF-{name}" in seen["system"]
            and f"USER-OF-{name}" in seen["system"]
            and not any(f"-OF-{o}" in seen["system"] for o in others)
        )
        crossed += not ok
    assert crossed == 0
    assert len(calls) == REQUESTS
    # Every upstream call carried one profile's secret, model and persona together.
    for call in calls:
        owner = call["model"].removeprefix("model-")
        assert call["auth"] == f"Bearer sk-secret-{owner}" and call["system"].startswith(f"SOUL-OF-{owner}")
    assert CheckingTurns.mismatches == []


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(1234)


LOAD_PROFILES = [f"q{i:02d}" for i in range(24)]
LOAD_KEYS = 6  # key k<i> may use profiles q<j> with j % 6 == i; key "all" may use every one
LOAD_REQUESTS = int(os.environ.get("HERMES_API_ISOLATION_REQUESTS", "3000"))


def test_thousands_of_requests_across_profiles_and_keys(
    fake_upstream: FakeUpstream, home: HermesHome, tmp_path, serve_process
) -> None:
    """``hermes-api serve`` in its own process, the echoing provider in another: 3000
    interleaved requests (stream and not; by model, header, prefix and route) over 24
    profiles and 7 keys, a sixth of them for a profile the key may not use. Every answer
    and every upstream call carries its own profile's secret, model and persona, and
    the refused requests never reach the provider."""
    for name in LOAD_PROFILES:
        home.add(
            name,
            model={
                "default": f"model-{name}",
                "provider": "custom",
                "base_url": fake_upstream.base_url("echo"),
                "key_env": "K",
            },
            env={"K": f"sk-secret-{name}"},
            soul=f"SOUL-OF-{name}",
            memory=[f"MEMORY-OF-{name}"],
            user=[f"USER-OF-{name}"],
        )
    keys = {f"k{i}": f"client-key-{i}-" + "x" * 20 for i in range(LOAD_KEYS)} | {"all": "client-key-all-" + "y" * 20}
    allowed = {f"k{i}": {p for j, p in enumerate(LOAD_PROFILES) if j % LOAD_KEYS == i} for i in range(LOAD_KEYS)}
    allowed["all"] = set(LOAD_PROFILES)
    config = tmp_path / "hermes-api.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hermes_home": str(home.root),
                "expose": LOAD_PROFILES,
                "default_profile": None,
                "keys": [
                    {"name": k, "key_sha256": digest(v), "profiles": "*" if k == "all" else sorted(allowed[k])}
                    for k, v in keys.items()
                ],
                "routes": [{"chat_id": f"room-{n}", "profile": n} for n in LOAD_PROFILES],
                "log_level": "warning",
            }
        )
    )
    server = serve_process(config, tmp_path / "serve.log")
    rng = random.Random(5)
    before = fake_upstream.stats()["requests"]

    async def one(client: httpx.AsyncClient, i: int) -> tuple[bool, str]:
        key = rng.choice(sorted(keys))
        forbidden = i % 6 == 5 and key != "all"
        pool = sorted(set(LOAD_PROFILES) - allowed[key]) if forbidden else sorted(allowed[key])
        name = rng.choice(pool)
        tag = f"tag-{i}"
        url, headers = "/v1/chat/completions", {"Authorization": f"Bearer {keys[key]}"}
        body: dict = {"messages": [{"role": "user", "content": tag}], "stream": i % 2 == 0}
        how = i % 4
        if how == 0:
            body["model"] = name
        elif how == 1:
            headers["X-Hermes-Profile"] = name
        elif how == 2:
            url = f"/p/{name}/v1/chat/completions"
        else:
            headers["X-Hermes-Chat-Id"] = f"room-{name}"
        r = await client.post(url, json=body, headers=headers)
        if forbidden:
            return r.status_code == 403 and r.json()["error"]["code"] == "model_not_found", "forbidden"
        if r.status_code != 200:
            return False, f"{r.status_code} {r.text[:200]}"
        if body["stream"]:
            datas = [orjson.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
            models = {d["model"] for d in datas}
            text = "".join(d["choices"][0]["delta"].get("content", "") for d in datas)
            complete = r.text.rstrip().endswith("data: [DONE]")
        else:
            models, text, complete = {r.json()["model"]}, r.json()["choices"][0]["message"]["content"], True
        seen = orjson.loads(text)
        others = [o for o in LOAD_PROFILES if o != name]
        ok = (
            complete
            and models == {name}
            and r.headers["x-hermes-profile"] == name
            and seen["tag"] == tag
            and seen["auth"] == f"Bearer sk-secret-{name}"
            and seen["model"] == f"model-{name}"
            and all(f"{kind}-OF-{name}" in seen["system"] for kind in ("SOUL", "MEMORY", "USER"))
            and not any(f"-OF-{o}" in seen["system"] for o in others)
            and not any(v in seen["system"] or v in text for v in keys.values())
        )
        return ok, "allowed" if ok else f"allowed, but {name} got {seen} ({models})"

    async def run_all() -> list[tuple[bool, str]]:
        # 64 in flight: httpx's own pool queue grows costly with thousands waiting.
        gate = asyncio.Semaphore(64)

        async def gated(client: httpx.AsyncClient, i: int) -> tuple[bool, str]:
            async with gate:
                return await one(client, i)

        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
            return await asyncio.gather(*(gated(client, i) for i in range(LOAD_REQUESTS)))

    started = time.monotonic()
    results = asyncio.run(run_all())
    took = time.monotonic() - started
    crossed = [r for r in results if not r[0]]
    allowed_count = sum(1 for _, kind in results if kind.startswith("allowed"))
    print(f"\n{LOAD_REQUESTS} requests ({allowed_count} allowed) in {took:.1f} s: {len(crossed)} wrong")
    assert crossed[:3] == []
    assert fake_upstream.stats()["requests"] - before == allowed_count, "refused requests never reach the provider"
