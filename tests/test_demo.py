"""``hermes-api demo`` as a newcomer meets it: what it prints runs when pasted into a
shell, its port is checked before anything starts, and it finds its example home in any
install (tests/test_install.py installs it for real; test_e2e.py runs it on the model)."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import respx

from hermes_api import cli, demo
from hermes_api.settings import Settings

from .conftest import HermesHome, completion


def pasted(text: str) -> subprocess.CompletedProcess[str]:
    """``text`` pasted into a shell: bash reading it line by line, heredocs included."""
    return subprocess.run(["bash"], input=text, capture_output=True, text=True, timeout=60)


def test_the_printed_examples_run_as_pasted(home: HermesHome, make_app, upstream: respx.MockRouter, live) -> None:
    """Everything between "Paste these" and "Press Ctrl-C" is pasted as it is: the curl
    commands and the SDK example (its heredoc flush left, the demo's own interpreter)."""
    home.add("coder")
    home.add("researcher")
    upstream.post("/chat/completions").respond(json=completion("Hello!"))
    server = live(make_app(expose=["default", "coder", "researcher"]))
    text = demo.usage_text(server.url)
    commands = text.split("Paste these into another shell:\n", 1)[1].split("Press Ctrl-C", 1)[0]
    assert demo.sdk_example(server.url) in commands and demo.curl_example(server.url) in commands
    if shutil.which("curl") is None:
        commands = demo.sdk_example(server.url)
    done = pasted(commands)
    assert done.returncode == 0, done.stderr
    assert "here-document" not in done.stderr and "Error" not in done.stderr
    assert done.stdout.rstrip().endswith("coder Hello!")
    if shutil.which("curl"):
        assert '"id":"coder"' in done.stdout and '"model":"researcher"' in done.stdout


def test_the_sdk_example_uses_the_demo_s_interpreter_quoted() -> None:
    example = demo.sdk_example("http://127.0.0.1:8642", python="/opt/my venv/bin/python")
    assert example.startswith("'/opt/my venv/bin/python' - <<'EOF'\n")
    assert example.endswith("\nEOF\n") and all(not line.startswith(" ") for line in example.splitlines())
    assert demo.sdk_example("http://x").startswith(sys.executable)


def test_the_demo_serves_the_packaged_example_home_by_default(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # not the checkout: the home comes with the package
    assert (demo.EXAMPLE_HOME / "hermes-api.yaml").is_file()
    assert demo.EXAMPLE_HOME.parent == Path(demo.__file__).resolve().parent
    args = cli.build_parser().parse_args(["demo"])
    assert args.config is None
    assert {p.name for p in (demo.EXAMPLE_HOME / "profiles").iterdir()} == {"agent", "coder", "family", "researcher"}


def test_the_demo_checks_its_port_before_starting_the_model_server(monkeypatch, tmp_path: Path, capsys) -> None:
    weights = tmp_path / "weights.gguf"
    weights.write_bytes(b"")
    monkeypatch.setattr(demo, "installed_weights", lambda: weights)
    monkeypatch.setattr(demo, "llama_server", lambda *a: pytest.fail("llama.cpp must not start"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["demo", "--port", str(port)], {}) == 3
    out, err = capsys.readouterr()
    assert out == ""  # no "is serving" banner
    assert err.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(is hermes-api already running? stop it, or choose another --port)"
    ]


def test_with_the_agent_the_printed_examples_carry_the_run_s_key(
    home: HermesHome, make_app, upstream: respx.MockRouter, live, tmp_path: Path
) -> None:
    """Agent profiles are served only behind keys: the demo makes one, says so, and its
    curl and SDK examples send it as pasted (tests/test_e2e.py pastes them all, the agent's
    turn and its state.db rows included, against the real demo)."""
    home.add("coder")
    home.add("researcher")
    upstream.post("/chat/completions").respond(json=completion("Hello!"))
    key = "demo-key-0123456789abcdef"
    keys = [{"name": "demo", "key_sha256": hashlib.sha256(key.encode()).hexdigest()}]
    server = live(make_app(expose=["default", "coder", "researcher"], keys=keys))
    agent = demo.DemoAgent("agent", key, tmp_path / "home" / "profiles" / "agent" / "state.db")
    text = demo.usage_text(server.url, agent)
    assert f"this run's key is {key} " in text and f"its turns land in {agent.state_db}." in text
    commands = demo.curl_example(server.url, key) + demo.sdk_example(server.url, key=key)
    assert demo.curl_example(server.url, key) in text and demo.sdk_example(server.url, key=key) in text
    done = pasted(commands)
    assert done.returncode == 0, done.stderr
    assert '"id":"coder"' in done.stdout and '"model":"researcher"' in done.stdout
    assert done.stdout.rstrip().endswith("coder Hello!")
    without_key = pasted(demo.curl_example(server.url))
    assert without_key.stdout.count('"code":"invalid_api_key"') == 2  # both commands refused


def test_the_demo_adds_the_agent_to_the_example_config_and_serves_a_writable_copy(tmp_path: Path) -> None:
    """The example config with the demo's additions: the profile ``agent`` on the agent
    runtime with no toolsets and the model server's URL for its worker, the run's key,
    and a copy of the home that keeps what Hermes wrote there across starts."""
    copy = demo.writable_home(tmp_path / "state")
    assert (copy / "profiles" / "agent" / "config.yaml").is_file() and not (copy / "hermes-api.yaml").exists()
    (copy / "profiles" / "agent" / "state.db").write_bytes(b"turns")
    (copy / "SOUL.md").write_text("edited")
    assert demo.writable_home(tmp_path / "state") == copy
    assert (copy / "profiles" / "agent" / "state.db").read_bytes() == b"turns"  # kept
    assert (copy / "SOUL.md").read_text() == (demo.EXAMPLE_HOME / "SOUL.md").read_text()  # refreshed
    settings = Settings.load(demo.EXAMPLE_HOME / "hermes-api.yaml", {}, demo.agent_overrides(copy, "k" * 24))
    assert settings.hermes_home == copy
    assert settings.agent.serves("agent") and not settings.agent.serves("coder")
    assert settings.agent.profile("agent").toolsets == ()
    assert settings.agent.env == (demo.EXAMPLE_BASE_URL_VAR,)
    assert [k.digest for k in settings.keys] == [hashlib.sha256(b"k" * 24).digest()]
