"""One OpenAI SDK version against a live hermes-api: run inside that SDK's own venv.

    <venv>/bin/python e2e/sdk_check.py --base-url http://127.0.0.1:<port>/v1 --key <key>

Imports nothing but the SDK and the standard library (the venv holds only ``openai``).
Prints one JSON object per check: ``{"check", "status": "pass"|"fail"|"skip", "detail"}``
and exits 0 when no check failed. The server is expected to serve profiles ``alpha``
and ``beta`` to this key (``gamma`` is exposed but not allowed), answered by the e2e
recording upstream (``pong from upstream-<profile>: <text>``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import openai
from openai import AsyncOpenAI, OpenAI

USER = [{"role": "user", "content": "hi"}]
RESPONSES_PENDING = "hermes-api does not serve POST /v1/responses yet (issue 3): 404"


class Skip(Exception):
    """The check cannot run against this server yet."""


def expect(condition: bool, detail: str) -> None:
    if not condition:
        raise AssertionError(detail)


def pong(profile: str, text: str = "hi") -> str:
    return f"pong from upstream-{profile}: {text}"


def sync_checks(client: OpenAI) -> dict[str, Callable[[], Any]]:
    def models() -> str:
        ids = [m.id for m in client.models.list()]
        expect(ids == ["alpha", "beta"], f"models {ids}")
        return ",".join(ids)

    def chat() -> str:
        answer = client.chat.completions.create(model="alpha", messages=USER)
        expect(answer.model == "alpha", f"model {answer.model}")
        expect(answer.choices[0].message.content == pong("alpha"), repr(answer.choices[0].message.content))
        return answer.choices[0].message.content or ""

    def chat_stream() -> str:
        stream = client.chat.completions.create(model="beta", messages=USER, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        expect(text.strip() == pong("beta"), repr(text))
        return text.strip()

    def routing_headers() -> str:
        # A routing header on every request (default_headers), another on one call (extra_headers).
        routed = client.with_options(default_headers={"X-Hermes-Profile": "beta"})
        answer = routed.chat.completions.create(model="hermes-agent", messages=USER)
        expect(answer.model == "beta", f"default_headers routed to {answer.model}")
        answer = client.chat.completions.create(
            model="hermes-agent", messages=USER, extra_headers={"X-Hermes-Profile": "alpha"}
        )
        expect(answer.model == "alpha", f"extra_headers routed to {answer.model}")
        return "default_headers, extra_headers"

    def errors() -> str:
        try:
            client.chat.completions.create(model="gamma", messages=USER)
        except openai.PermissionDeniedError as exc:
            expect(exc.status_code == 403 and exc.code == "model_not_found", f"403 {exc.code}")
        else:
            raise AssertionError("gamma was allowed")
        try:
            client.chat.completions.create(model="zeta", messages=USER)
        except openai.NotFoundError as exc:
            expect(exc.code == "model_not_found", f"404 {exc.code}")
        else:
            raise AssertionError("zeta was found")
        return "403 PermissionDeniedError, 404 NotFoundError"

    def responses() -> str:
        try:
            answer = client.responses.create(model="alpha", input="hi")
        except openai.NotFoundError as exc:
            if exc.code == "not_found":
                raise Skip(RESPONSES_PENDING) from None
            raise
        expect(answer.model == "alpha", f"model {answer.model}")
        expect(answer.output_text == pong("alpha"), repr(answer.output_text))
        stream = client.responses.create(model="beta", input="hi", stream=True)
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        expect(text.strip() == pong("beta"), repr(text))
        return answer.output_text

    return {
        "sync models": models,
        "sync chat": chat,
        "sync chat stream": chat_stream,
        "sync routing headers": routing_headers,
        "sync errors": errors,
        "sync responses": responses,
    }


def async_checks(client: AsyncOpenAI) -> dict[str, Callable[[], Awaitable[Any]]]:
    async def chat() -> str:
        answer = await client.chat.completions.create(model="beta", messages=USER)
        expect(answer.model == "beta" and answer.choices[0].message.content == pong("beta"), repr(answer))
        return answer.choices[0].message.content or ""

    async def chat_stream() -> str:
        stream = await client.chat.completions.create(model="alpha", messages=USER, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        expect(text.strip() == pong("alpha"), repr(text))
        return text.strip()

    async def concurrent() -> str:
        # Concurrent requests for different profiles never see each other's profile.
        names = ["alpha", "beta"] * 4
        answers = await asyncio.gather(*(client.chat.completions.create(model=n, messages=USER) for n in names))
        got = [a.choices[0].message.content for a in answers]
        expect(got == [pong(n) for n in names], repr(got))
        return f"{len(names)} concurrent"

    async def responses() -> str:
        try:
            answer = await client.responses.create(model="beta", input="hi")
        except openai.NotFoundError as exc:
            if exc.code == "not_found":
                raise Skip(RESPONSES_PENDING) from None
            raise
        expect(answer.output_text == pong("beta"), repr(answer.output_text))
        return answer.output_text

    return {
        "async chat": chat,
        "async chat stream": chat_stream,
        "async concurrent profiles": concurrent,
        "async responses": responses,
    }


def report(check: str, status: str, detail: str) -> dict[str, str]:
    line = {"check": check, "status": status, "detail": detail}
    print(json.dumps(line), flush=True)
    return line


async def run(base_url: str, key: str) -> list[dict[str, str]]:
    results = []
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
    checks: list[tuple[str, Callable[[], Any]]] = list(sync_checks(client).items())
    aclient = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
    achecks = list(async_checks(aclient).items())
    for name, check in checks + achecks:
        try:
            outcome = check()
            if asyncio.iscoroutine(outcome):
                outcome = await outcome
            results.append(report(name, "pass", str(outcome)))
        except Skip as exc:
            results.append(report(name, "skip", str(exc)))
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the run
            detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            results.append(report(name, "fail", detail))
    client.close()
    await aclient.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    print(json.dumps({"check": "version", "status": "pass", "detail": openai.__version__}), flush=True)
    results = asyncio.run(run(args.base_url, args.key))
    return 1 if any(r["status"] == "fail" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
