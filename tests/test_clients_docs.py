"""docs/clients.md is tested (STYLE.md 11): every block marked ``<!-- test: NAME -->``
is loaded or run here against a live server built from the page's own hermes-api.yaml.

LibreChat cannot run on these machines (it needs MongoDB), so its two requests are
reproduced as LibreChat makes them (danny-avila/LibreChat ``packages/api/src/endpoints/
models.ts`` ``fetchModels``: ``GET <baseURL>/models`` with ``Authorization: Bearer
<apiKey>``, reading ``data[].id``; ``packages/api/src/utils/env.ts`` ``resolveHeaders``:
``{{LIBRECHAT_USER_<FIELD>}}`` and ``{{LIBRECHAT_BODY_<FIELD>}}`` in custom headers, left
as they are when there is no user). Open WebUI's block is checked against the
environment the e2e suite runs the real Open WebUI with.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx
import yaml

from e2e.stack import open_webui_env
from hermes_api.app import create_app
from hermes_api.headers import IDENTITY_HEADERS
from hermes_api.settings import Settings

from .conftest import HermesHome, LiveServer, chunks, completion, sse_body, tool_completion

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "clients.md").read_text()
DOC_URL = "http://127.0.0.1:8642"
KEYS = {
    "HERMES_API_KEY_OPENWEBUI": "key-openwebui",
    "HERMES_API_KEY_LIBRECHAT": "key-librechat",
    "HERMES_API_KEY": "key-scripts",
}
ALL_PROFILES = ["coder", "default", "family", "researcher"]


def blocks() -> dict[str, tuple[str, str]]:
    """``name -> (language, code)`` for every ``<!-- test: name -->`` block."""
    found = re.findall(r"<!-- test: ([\w-]+) -->\n```(\w+)\n(.*?)```", DOC, re.S)
    return {name: (lang, code) for name, lang, code in found}


BLOCKS = blocks()


def test_the_tested_blocks_are_all_there() -> None:
    assert set(BLOCKS) == {
        "hermes-config",
        "openwebui-env",
        "curl-openwebui-identity",
        "librechat-yaml",
        "curl-librechat-identity",
        "sdk-model",
        "sdk-headers",
        "sdk-async",
        "sdk-function-calling",
        "agents-sdk",
        "curl-models",
        "curl-chat",
        "curl-stream-header",
    }
    assert DOC.count("<!-- test: ") == len(BLOCKS)


def docs_settings(home: HermesHome, tmp_path: Path) -> Settings:
    path = tmp_path / "hermes-api.yaml"
    path.write_text(BLOCKS["hermes-config"][1])
    for name in ("researcher", "coder", "family"):
        home.add(name)
    overrides = {"hermes_home": str(home.root), "state_dir": str(tmp_path / "state")}
    return Settings.load(path, KEYS, overrides)


def answer(request: httpx.Request) -> httpx.Response:
    """The provider: ``I am <upstream model>``, streamed when asked. Given tools, it
    first calls the first one for Paris, then says what the tool said."""
    body = orjson.loads(request.content)
    text, model = f"I am {body['model']}", body["model"]
    last = body["messages"][-1]
    if body.get("tools") and last["role"] != "tool":
        name = body["tools"][0]["function"]["name"]
        return httpx.Response(200, json=tool_completion(("call_1", name, '{"city": "Paris"}')))
    if last["role"] == "tool":
        text = f"{text}; the tool said: {last['content']}"
    if body.get("stream"):
        return httpx.Response(
            200, content=sse_body(*chunks(text, model=model)), headers={"content-type": "text/event-stream"}
        )
    return httpx.Response(200, json=completion(text, model=model))


@pytest.fixture
def server(home: HermesHome, tmp_path: Path, upstream: respx.MockRouter, live) -> LiveServer:
    upstream.post("/chat/completions").mock(side_effect=answer)
    settings = docs_settings(home, tmp_path)
    app = create_app(settings, environ={}, transport=httpx.MockTransport(upstream.async_handler))
    return live(app)


def test_hermes_config_block_is_valid(home: HermesHome, tmp_path: Path) -> None:
    settings = docs_settings(home, tmp_path)
    trusted = {key.name: key.trusted_identity for key in settings.keys}
    assert trusted == {"open-webui": True, "librechat": True, "scripts": False}
    fields = {field for rule in settings.routes for field, _ in rule.match}
    assert fields == {"chat_id", "openwebui_user_email", "librechat_user_email"}


# -- the OpenAI SDK ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("sdk-model", f"{ALL_PROFILES}\nresearcher I am model-researcher\n", id="model"),
        pytest.param("sdk-headers", "coder\nresearcher\n", id="default-and-extra-headers"),
        pytest.param("sdk-async", "I am model-family \n", id="async-stream"),
        pytest.param("sdk-function-calling", "I am model-researcher; the tool said: Sunny in Paris\n", id="tools"),
        pytest.param("agents-sdk", "I am model-researcher; the tool said: Sunny in Paris\n", id="agents-sdk"),
    ],
)
def test_sdk_snippets_run(server: LiveServer, monkeypatch, capsys, name: str, expected: str) -> None:
    language, code = BLOCKS[name]
    assert language == "python" and DOC_URL in code
    monkeypatch.setenv("HERMES_API_KEY", KEYS["HERMES_API_KEY"])
    exec(compile(code.replace(DOC_URL, server.url), f"docs/clients.md:{name}", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out == expected


# -- curl -------------------------------------------------------------------------------


def run_curl(server: LiveServer, name: str) -> str:
    language, code = BLOCKS[name]
    assert language == "sh" and code.lstrip().startswith("curl ")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **KEYS}
    done = subprocess.run(
        ["bash", "-c", code.replace(DOC_URL, server.url)], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def sse_models(text: str) -> set[str]:
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return {orjson.loads(e)["model"] for e in events[:-1]}


@pytest.mark.parametrize(
    ("name", "check"),
    [
        pytest.param(
            "curl-models", lambda out: [m["id"] for m in orjson.loads(out)["data"]] == ALL_PROFILES, id="models"
        ),
        pytest.param("curl-chat", lambda out: orjson.loads(out)["model"] == "researcher", id="chat"),
        pytest.param("curl-stream-header", lambda out: sse_models(out) == {"coder"}, id="stream-header"),
        pytest.param("curl-openwebui-identity", lambda out: orjson.loads(out)["model"] == "coder", id="openwebui"),
        pytest.param("curl-librechat-identity", lambda out: orjson.loads(out)["model"] == "family", id="librechat"),
    ],
)
def test_curl_snippets_run(server: LiveServer, name: str, check: Callable[[str], bool]) -> None:
    out = run_curl(server, name)
    assert check(out), out


# -- Open WebUI -------------------------------------------------------------------------


def test_openwebui_env_block_is_what_the_e2e_suite_runs(tmp_path: Path) -> None:
    language, code = BLOCKS["openwebui-env"]
    documented = dict(line.split("=", 1) for line in code.splitlines() if line and not line.startswith("#"))
    assert documented["OPENAI_API_BASE_URL"] == DOC_URL + "/v1"
    e2e = open_webui_env(tmp_path, "http://127.0.0.1:1/v1", "k")
    for name, value in documented.items():
        if name not in {"OPENAI_API_BASE_URL", "OPENAI_API_KEY"}:
            assert e2e[name] == value, name


# -- LibreChat --------------------------------------------------------------------------


def librechat_endpoints() -> list[dict[str, Any]]:
    return yaml.safe_load(BLOCKS["librechat-yaml"][1])["endpoints"]["custom"]


def librechat_resolve(headers: Mapping[str, str], user: Mapping[str, str] | None, body: Mapping[str, Any]) -> dict:
    """LibreChat's ``resolveHeaders``: user fields only when there is a user (else the
    placeholder stays), body fields always (absent = "")."""
    resolved = {}
    for name, value in headers.items():
        if user:
            for field, field_value in user.items():
                value = value.replace(f"{{{{LIBRECHAT_USER_{field.upper()}}}}}", field_value)
        for field in ("conversationId", "parentMessageId", "messageId"):
            value = value.replace(f"{{{{LIBRECHAT_BODY_{field.upper()}}}}}", str(body.get(field) or ""))
        resolved[name] = value
    return resolved


def call(method: str, url: str, headers: Mapping[str, str], body: Any = None) -> tuple[int, Any]:
    """One HTTP request with the standard library (respx intercepts httpx in this process,
    as it must for the provider); the status and the parsed JSON answer."""
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={**headers, "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def librechat_key(endpoint: Mapping[str, Any]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: KEYS[m.group(1)], endpoint["apiKey"])


def test_librechat_yaml_block() -> None:
    fetched, personal = librechat_endpoints()
    assert fetched["models"]["fetch"] is True and personal["models"] == {"default": ["hermes-agent"], "fetch": False}
    placeholders = {
        "x-librechat-user-id": "{{LIBRECHAT_USER_ID}}",
        "x-librechat-user-email": "{{LIBRECHAT_USER_EMAIL}}",
        "x-librechat-conversation-id": "{{LIBRECHAT_BODY_CONVERSATIONID}}",
    }
    assert placeholders.keys() == {h for f, h in IDENTITY_HEADERS.items() if f.startswith("librechat_")}
    for endpoint in (fetched, personal):
        assert endpoint["baseURL"] == DOC_URL + "/v1"
        assert endpoint["titleConvo"] is True and endpoint["titleModel"] == "current_model"
        assert {k.lower(): v for k, v in endpoint["headers"].items()} == placeholders


def test_librechat_model_fetch(server: LiveServer) -> None:
    endpoint = librechat_endpoints()[0]
    base = endpoint["baseURL"].replace(DOC_URL, server.url)
    # Newer LibreChat resolves the headers for the model fetch and drops unresolved ones;
    # older ones sent none, or the templates as they are. All three list the profiles.
    for headers in ({}, dict(endpoint["headers"])):
        status, answer = call(
            "GET", f"{base}/models", {**headers, "Authorization": f"Bearer {librechat_key(endpoint)}"}
        )
        assert status == 200 and [m["id"] for m in answer["data"]] == ALL_PROFILES


CAROL = {"id": "65f0c0ffee0000000000beef", "email": "carol@example.com", "username": "carol"}


@pytest.mark.parametrize(
    ("endpoint_index", "model", "user", "status", "profile"),
    [
        pytest.param(0, "coder", CAROL, 200, "coder", id="picked-profile-wins"),
        pytest.param(1, "hermes-agent", CAROL, 200, "family", id="identity-routes"),
        pytest.param(1, "hermes-agent", {**CAROL, "email": "dave@example.com"}, 200, "default", id="no-route-default"),
        pytest.param(1, "hermes-agent", None, 400, None, id="no-user-unexpanded-400"),
    ],
)
def test_librechat_chat(server: LiveServer, endpoint_index: int, model: str, user, status: int, profile) -> None:
    endpoint = librechat_endpoints()[endpoint_index]
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": False}
    headers = librechat_resolve(endpoint["headers"], user, {"conversationId": "3f2b8c1e-conv"})
    got, answer = call(
        "POST",
        endpoint["baseURL"].replace(DOC_URL, server.url) + "/chat/completions",
        {**headers, "Authorization": f"Bearer {librechat_key(endpoint)}"},
        body,
    )
    assert got == status, answer
    if profile:
        assert answer["model"] == profile
    else:
        assert answer["error"]["param"] == "x-librechat-user-id" and answer["error"]["code"] == "invalid_header"
