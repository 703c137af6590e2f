"""Per-key limits (``rpm``, ``tpm``, ``tokens_per_day``, overall and per profile): hit
exactly at their bound, per key and independent between keys, exact under concurrent
turns and across two server processes on one store, and ``Retry-After`` honoured by
the OpenAI SDK's own retry."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from hermes_api.quotas import DAY, MINUTE, quotas
from hermes_api.settings import APIKey, ConfigError, RateLimits
from hermes_api.store import Quota, UsageRecord, open_store

from .conftest import FakeUpstream, HermesHome, completion, digest

USER = [{"role": "user", "content": "hi"}]


def key(name: str, **limits: Any) -> dict[str, Any]:
    return {"name": name, "key_sha256": digest(f"key-{name}"), **limits}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer key-{name}"}


def chat(client: Any, name: str, model: str = "alpha") -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": model, "messages": USER}, headers=auth(name))


def refused(r: httpx.Response, window: int = 60) -> str:
    """The message of a 429 of a key's limit whose window is ``window`` seconds long."""
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "key_rate_limit_exceeded")
    assert window - 5 <= int(r.headers["retry-after"]) <= window  # its oldest turn was moments ago
    return error["message"]


def test_limits_in_the_config(make_settings) -> None:
    settings = make_settings(keys=[key("team", rpm=60, tokens_per_day=1000, per_profile={"alpha": {"tpm": 50}}),
                                   key("free")])  # fmt: skip
    team, free = settings.keys
    assert team.limits == RateLimits(rpm=60, tokens_per_day=1000)
    assert team.profile_limits == (("alpha", RateLimits(tpm=50)),)
    assert not free.limits and free.profile_limits == ()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        pytest.param({"rpm": 0}, "keys[0] (team): rpm must be a positive number", id="zero"),
        pytest.param({"tpm": "5"}, "keys[0] (team): tpm must be a positive number", id="string"),
        pytest.param({"tokens_per_day": 1.5}, "tokens_per_day must be a positive integer", id="fraction"),
        pytest.param({"per_profile": {"alpha": {"rpm": 1, "burst": 2}}}, "unknown setting 'burst'", id="unknown"),
        pytest.param(
            {"profiles": ["beta"], "per_profile": {"alpha": {"rpm": 1}}},
            "per_profile: the key may not use profile 'alpha'",
            id="not-its-profile",
        ),  # fmt: skip
    ],
)
def test_bad_limits_are_refused(make_settings, entry: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_settings(keys=[key("team", **entry)])
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_key_names_are_unique(make_settings) -> None:
    with pytest.raises(ConfigError, match="two keys are named 'team'"):
        make_settings(keys=[key("team"), {**key("team2"), "name": "team"}])


def test_quota_windows() -> None:
    k = APIKey("k", b"", limits=RateLimits(rpm=5, tpm=100, tokens_per_day=1000),
               profile_limits=(("alpha", RateLimits(rpm=2)),))  # fmt: skip
    assert quotas(k, "beta", 1000.0) == [Quota(1000 - MINUTE, 5, 100), Quota(1000 - DAY, None, 1000)]
    assert quotas(k, "alpha", 1000.0)[-1] == Quota(1000 - MINUTE, 2, None, "alpha")
    assert quotas(APIKey("free", b""), "alpha", 1000.0) == []


def test_rpm_is_exact_per_key_and_independent_between_keys(make_app, upstream) -> None:
    upstream.post("/chat/completions").respond(json=completion())
    keys = [key("small", rpm=3), key("other", rpm=3), key("free"), key("prom", metrics=True, profiles=[])]
    with TestClient(make_app(keys=keys)) as client:
        assert [chat(client, "small").status_code for _ in range(3)] == [200] * 3
        assert "limit of 3 requests per minute" in refused(chat(client, "small"))
        assert "limit of 3 requests per minute" in refused(chat(client, "small")), "a refusal spends nothing new"
        assert [chat(client, "other").status_code for _ in range(3)] == [200] * 3  # its own budget
        refused(chat(client, "other"))
        assert all(chat(client, "free").status_code == 200 for _ in range(10))
        r = client.post("/v1/responses", json={"model": "alpha", "input": "hi"}, headers=auth("small"))
        refused(r)  # Responses turns count against the same budget
        assert client.get("/v1/models", headers=auth("small")).status_code == 200, "only turns are limited"
        scraped = client.get("/metrics", headers=auth("prom")).text
    refusals = {
        s.labels["key"]: s.value
        for family in text_string_to_metric_families(scraped)
        for s in family.samples
        if s.name == "hermes_api_limit_refusals_total" and s.labels["code"] == "key_rate_limit_exceeded"
    }
    assert refusals == {"small": 3, "other": 1}


def test_per_profile_limits_bound_one_profile(make_app, upstream) -> None:
    upstream.post("/chat/completions").respond(json=completion())
    keys = [key("team", rpm=4, per_profile={"alpha": {"rpm": 2}})]
    with TestClient(make_app(keys=keys)) as client:
        assert [chat(client, "team", "alpha").status_code for _ in range(2)] == [200, 200]
        assert "on model `alpha`" in refused(chat(client, "team", "alpha"))
        assert [chat(client, "team", "beta").status_code for _ in range(2)] == [200, 200]
        assert "on model" not in refused(chat(client, "team", "beta"))  # 4 turns in all


@pytest.mark.parametrize(
    ("limits", "allowed", "words"),
    [
        pytest.param({"tpm": 24}, 2, "24 tokens per minute", id="tpm"),
        pytest.param({"tokens_per_day": 36}, 3, "36 tokens per day", id="tokens_per_day"),
        pytest.param({"tpm": 25}, 3, "25 tokens per minute", id="tpm-overshoot"),
        pytest.param({"tpm": 1000, "tokens_per_day": 24}, 2, "24 tokens per day", id="the-day-first"),
    ],
)
def test_token_limits_count_the_providers_figures(make_app, upstream, limits, allowed, words) -> None:
    """Each turn uses 9 + 3 = 12 tokens (the provider's usage): a turn is admitted while
    fewer tokens than the bound are spent, so 25 admits a third turn that ends at 36."""
    upstream.post("/chat/completions").respond(json=completion())
    with TestClient(make_app(keys=[key("team", **limits), key("other", **limits)])) as client:
        assert [chat(client, "team").status_code for _ in range(allowed)] == [200] * allowed
        assert words in refused(chat(client, "team"), 86400 if "day" in words else 60)
        assert chat(client, "other").status_code == 200


def test_concurrent_turns_cannot_overshoot_rpm(make_app, upstream, live) -> None:
    upstream.post("/chat/completions").respond(json=completion())
    server = live(make_app(keys=[key("team", rpm=5)]))

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            answers = await asyncio.gather(*(chat(client, "team") for _ in range(20)))
        return [r.status_code for r in answers]

    statuses = asyncio.run(burst())
    assert sorted(statuses) == [200] * 5 + [429] * 15


def test_two_processes_on_one_store_share_the_budget(
    fake_upstream: FakeUpstream, home: HermesHome, tmp_path: Path, serve_process
) -> None:
    """Two ``hermes-api serve`` processes on one state_dir (as workers are): the key's
    rpm holds over both together, under requests sent to both at once."""
    home.add("ok", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("ok")})
    config = tmp_path / "hermes-api.yaml"
    config.write_text(yaml.safe_dump({"hermes_home": str(home.root), "expose": ["default", "ok"],
                                      "keys": [key("team", rpm=7)]}))  # fmt: skip
    a = serve_process(config, tmp_path / "a.log")
    b = serve_process(config, tmp_path / "b.log")

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=20) as client:
            calls = [
                client.post(
                    server.url + "/v1/chat/completions", json={"model": "ok", "messages": USER}, headers=auth("team")
                )  # fmt: skip
                for _ in range(10)
                for server in (a, b)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    assert sorted(asyncio.run(burst())) == [200] * 7 + [429] * 13


def test_the_openai_sdk_waits_for_retry_after_and_succeeds(
    make_settings, home: HermesHome, tmp_path: Path, fake_upstream: FakeUpstream, serve_process
) -> None:
    """The key spent its rpm 57.5 s ago (rows written into the running server's store):
    a call is refused with a Retry-After of about 3 s; the SDK waits that long on its own
    and its retry passes."""
    home.add("ok", model={"default": "m", "provider": "custom", "base_url": fake_upstream.base_url("ok")})
    settings = make_settings(expose=["default", "ok"], keys=[key("team", rpm=2)])
    config = tmp_path / "hermes-api.yaml"  # what make_settings wrote

    async def spend() -> None:
        store = await open_store(settings)
        try:
            for _ in range(2):
                await store.record_usage(
                    UsageRecord(
                        id=uuid.uuid4().hex,
                        created_at=time.time() - 57.5,
                        key_name="team",
                        profile="ok",
                        model="m",
                        operation="create_chat_completion",
                        stream=False,
                        request_id="earlier",
                        status=200,
                        input_tokens=1,
                        output_tokens=1,
                        duration=0.1,
                    )  # fmt: skip
                )
        finally:
            await store.aclose()

    server = serve_process(config, tmp_path / "serve.log")
    asyncio.run(spend())
    impatient = OpenAI(base_url=server.url + "/v1", api_key="key-team", max_retries=0, timeout=10)
    with pytest.raises(openai.RateLimitError) as caught:
        impatient.chat.completions.create(model="ok", messages=USER)
    assert caught.value.code == "key_rate_limit_exceeded"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 4
    patient = OpenAI(base_url=server.url + "/v1", api_key="key-team", max_retries=2, timeout=10)
    answer = patient.chat.completions.create(model="ok", messages=USER)
    assert answer.choices[0].message.content
    log = server.log()
    assert log.count('"POST /v1/chat/completions HTTP/1.1" 429') == 2
    assert log.count('"POST /v1/chat/completions HTTP/1.1" 200') == 1
