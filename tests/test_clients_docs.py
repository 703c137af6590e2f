"""docs/clients.md is tested: every block marked ``<!-- test: NAME -->``
is loaded or run here against a live server built from the page's own hermes-api.yaml.

LibreChat cannot run on these machines (it needs MongoDB), so its two requests are
reproduced as LibreChat makes them (danny-avila/LibreChat ``packages/api/src/endpoints/
models.ts`` ``fetchModels``: ``GET <baseURL>/models`` with ``Authorization: Bearer
<apiKey>``, reading ``data[].id``; ``packages/api/src/utils/env.ts`` ``resolveHeaders``:
``{{LIBRECHAT_USER_<FIELD>}}`` and ``{{LIBRECHAT_BODY_<FIELD>}}`` in custom headers, left
as they are when there is no user). Open WebUI's block is checked against the
environment the e2e suite runs the real Open WebUI with. Every LibreChat block in the
README and docs/ must pass LibreChat's own config schema (``librechat_schema.py``).
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
from starlette.testclient import TestClient

from e2e.stack import open_webui_env
from hermes_api.app import create_app
from hermes_api.headers import IDENTITY_HEADERS
from hermes_api.settings import Settings

from . import librechat_schema
from .conftest import AGENTS_SDK, HermesHome, LiveServer, chunks, client_venv, completion, sse_body, tool_completion

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
    ],
)
def test_sdk_snippets_run(server: LiveServer, monkeypatch, capsys, name: str, expected: str) -> None:
    language, code = BLOCKS[name]
    assert language == "python" and DOC_URL in code
    monkeypatch.setenv("HERMES_API_KEY", KEYS["HERMES_API_KEY"])
    exec(compile(code.replace(DOC_URL, server.url), f"docs/clients.md:{name}", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out == expected


def test_agents_sdk_snippet_runs(server: LiveServer) -> None:
    """In a venv of its own (``conftest.client_venv``): the Agents SDK needs openai 3.x."""
    language, code = BLOCKS["agents-sdk"]
    assert language == "python" and DOC_URL in code
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HERMES_API_KEY": KEYS["HERMES_API_KEY"]}
    python = client_venv(AGENTS_SDK)
    done = subprocess.run(
        [str(python), "-c", code.replace(DOC_URL, server.url)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "I am model-researcher; the tool said: Sunny in Paris\n"


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


def test_the_openwebui_responses_e2e_fails_when_the_route_is_404(make_app, upstream: respx.MockRouter, live) -> None:
    """The page says Open WebUI's Responses connections work, and the e2e suite holds
    it: its check of ``POST /v1/responses`` fails on a 404, never skips."""
    from e2e.test_openwebui_responses import assert_responses_api_served

    upstream.post("/chat/completions").respond(json=completion())
    assert_responses_api_served(live(make_app()).url)
    without = make_app()
    without.router.routes[:] = [r for r in without.router.routes if getattr(r, "path", "") != "/v1/responses"]
    with pytest.raises(AssertionError, match="answered 404"):
        assert_responses_api_served(live(without).url)


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


def librechat_configs() -> dict[str, str]:
    """Every YAML block in README.md and docs/*.md that is a ``librechat.yaml`` (a
    mapping with ``endpoints``), by ``file:line``."""
    found = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for match in re.finditer(r"```yaml\n(.*?)```", text, re.S):
            loaded = yaml.safe_load(match.group(1))
            if isinstance(loaded, dict) and "endpoints" in loaded:
                found[f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}"] = match.group(1)
    return found


def test_every_librechat_block_passes_librechat_s_own_schema() -> None:
    """LibreChat refuses to start on a ``librechat.yaml`` that fails ``configSchema``
    (``librechat-data-provider``); each block also names the package's config version."""
    configs = librechat_configs()
    assert {name.split(":")[0] for name in configs} == {"README.md", "docs/clients.md"}
    version, verdicts = librechat_schema.check(list(configs.values()))
    failing = {name: issues for name, issues in zip(configs, verdicts, strict=True) if issues}
    assert failing == {}
    assert {name: yaml.safe_load(text)["version"] for name, text in configs.items()} == dict.fromkeys(configs, version)


def test_the_schema_check_refuses_what_librechat_refuses() -> None:
    """The check can fail: LibreChat's schema refuses a file without ``version`` and a
    ``titleConvo`` that is not a boolean."""
    text = BLOCKS["librechat-yaml"][1]
    _, verdicts = librechat_schema.check(
        [text.replace("version:", "# version:"), text.replace("titleConvo: true", 'titleConvo: "yes"')]
    )
    assert [issue.split(":")[0] for issue in verdicts[0]] == ["version"]
    assert verdicts[1] and all("titleConvo" in issue for issue in verdicts[1])


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
        # LibreChat's agents send the templates unexpanded too: no route reads them here.
        pytest.param(0, "coder", None, 200, "coder", id="no-user-picked-profile-200"),
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
        # The routes read librechat_user_email only: that is the header named.
        assert answer["error"]["param"] == "x-librechat-user-email" and answer["error"]["code"] == "invalid_header"


# -- LangChain --------------------------------------------------------------------------


def test_langchain_default_model_names_a_profile_unless_aliased(make_app, upstream: respx.MockRouter) -> None:
    """docs/clients.md, LangChain: ``ChatOpenAI`` sends ``gpt-3.5-turbo`` when given no
    model (``langchain_openai/chat_models/base.py``, ``model_name``), which conflicts with
    header routing until the page's ``model_aliases`` line makes it mean "no profile"."""
    section = DOC.split("## LangChain", 1)[1].split("\n## ", 1)[0]
    aliases = yaml.safe_load(re.search(r"`(model_aliases: \[.*?\])`", section).group(1))["model_aliases"]
    assert "gpt-3.5-turbo" in aliases and "hermes-agent" in aliases
    upstream.post("/chat/completions").respond(json=completion())
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hi"}]}
    routed = {"X-Hermes-Profile": "alpha"}
    with TestClient(make_app(), raise_server_exceptions=False) as client:
        conflict = client.post("/v1/chat/completions", json=body, headers=routed)
        unknown = client.post("/v1/chat/completions", json=body)
    assert (conflict.status_code, conflict.json()["error"]["code"]) == (400, "profile_conflict")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "model_not_found")
    with TestClient(make_app(model_aliases=aliases)) as client:
        r = client.post("/v1/chat/completions", json=body, headers=routed)
    assert r.status_code == 200 and r.json()["model"] == "alpha"
