"""The server configuration (docs/contract.md §2): every problem reported, keys kept hashed."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from hermes_api.settings import ConfigError, Retention, Settings, Timeouts


def load(tmp_path: Path, raw: dict, environ: dict | None = None, **overrides) -> Settings:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return Settings.load(path, environ or {}, overrides)


def test_defaults_from_nothing(tmp_path: Path) -> None:
    s = Settings.load(None, {"HERMES_HOME": str(tmp_path)})
    assert s.hermes_home == tmp_path
    assert s.expose == frozenset({"default"}) and s.default_profile == "default"
    assert (s.host, s.port, s.max_body_bytes) == ("127.0.0.1", 8642, 10 * 1024 * 1024)
    assert s.state_dir == tmp_path / "hermes-api"
    assert s.model_aliases == frozenset({"hermes-agent"}) and s.keys == ()


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    s = load(tmp_path, {"hermes_home": "home", "state_dir": "state"})
    assert (s.hermes_home, s.state_dir) == (tmp_path / "home", tmp_path / "state")


def test_flags_override_the_file(tmp_path: Path) -> None:
    s = load(tmp_path, {"port": 9000, "expose": ["default", "a"]}, port=9100, expose="*")
    assert s.port == 9100 and s.expose is None


def test_keys_env_sha256_and_api_server_key(tmp_path: Path) -> None:
    raw = {
        "expose": ["default", "research"],
        "keys": [
            {"name": "webui", "key_env": "WEBUI_KEY", "profiles": ["research"]},
            {"name": "ops", "key_sha256": hashlib.sha256(b"ops-key").hexdigest().upper()},
        ],
    }
    s = load(tmp_path, raw, {"WEBUI_KEY": "webui-key", "API_SERVER_KEY": "server-key"})
    webui, ops, server = s.keys
    assert (webui.name, webui.profiles, webui.digest) == (
        "webui",
        frozenset({"research"}),
        hashlib.sha256(b"webui-key").digest(),
    )
    assert ops.profiles is None and ops.digest == hashlib.sha256(b"ops-key").digest()
    assert server.name == "API_SERVER_KEY" and server.profiles is None
    assert "webui-key" not in repr(s)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    raw = {
        "expose": ["default", "Bad"],
        "default_profile": "other",
        "port": "eighty",
        "timeouts": {"connect": -1},
        "max_body_bytes": 0,
        "keys": [{"name": "k", "key_env": "MISSING"}, {"name": "j"}, {"name": "s", "key_sha256": "xyz"}],
        "routes": [{"chat_id": "c"}, {"profile": "default", "room": "r"}, {"profile": "default"}],
        "colour": "blue",
    }
    with pytest.raises(ConfigError) as info:
        load(tmp_path, raw)
    text = str(info.value)
    for expected in [
        "unknown setting 'colour'",
        "expose: 'Bad' is not a valid profile name",
        "default_profile 'other' is not in expose",
        "port must be an integer",
        "timeouts.connect must be a positive number",
        "max_body_bytes must be a positive number",
        "key_env MISSING is not set",
        "keys[1] (j) needs exactly one of key_env or key_sha256",
        "key_sha256 must be 64 hex digits",
        "routes[0] needs a valid profile",
        "unknown match field 'room'",
        "routes[2] matches nothing",
    ]:
        assert expected in text
    assert len(info.value.problems) >= 12


def test_key_and_route_profiles_must_be_exposed(tmp_path: Path) -> None:
    raw = {
        "expose": ["default"],
        "keys": [{"name": "k", "key_sha256": "a" * 64, "profiles": ["hidden"]}],
        "routes": [{"user_id": "u", "profile": "hidden"}],
    }
    with pytest.raises(ConfigError, match="profile 'hidden' is not in expose") as info:
        load(tmp_path, raw)
    assert len(info.value.problems) == 2


def test_duplicate_key_values_are_refused(tmp_path: Path) -> None:
    raw = {"keys": [{"name": "a", "key_env": "K"}, {"name": "b", "key_sha256": hashlib.sha256(b"same").hexdigest()}]}
    with pytest.raises(ConfigError, match="two keys have the same value"):
        load(tmp_path, raw, {"K": "same"})


def test_expose_star_and_null_default(tmp_path: Path) -> None:
    s = load(tmp_path, {"expose": "*", "default_profile": None})
    assert s.expose is None and s.default_profile is None
    with pytest.raises(ConfigError, match="nothing would be served"):
        load(tmp_path, {"default_profile": None})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.5", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.10", False),
        ("example.com", False),
    ],
)
def test_loopback_detection(tmp_path: Path, host: str, loopback: bool) -> None:
    assert load(tmp_path, {"host": host}).is_loopback is loopback


def test_routes_keep_file_order_and_stringify(tmp_path: Path) -> None:
    s = load(tmp_path, {"routes": [{"thread_id": 42, "profile": "default"}, {"chat_id": "c", "profile": "default"}]})
    assert [r.match for r in s.routes] == [(("thread_id", "42"),), (("chat_id", "c"),)]


def test_retention_defaults_values_and_null(tmp_path: Path) -> None:
    assert load(tmp_path, {}).retention == Retention(max_age_days=30, max_responses=10_000, max_session_turns=10_000)
    s = load(tmp_path, {"retention": {"max_age_days": 0.5, "max_responses": 200, "max_session_turns": None}})
    assert s.retention == Retention(max_age_days=0.5, max_responses=200, max_session_turns=None)


def test_retention_problems_are_all_reported(tmp_path: Path) -> None:
    raw = {"retention": {"max_age_days": -1, "max_responses": 2.5, "max_session_turns": "many"}}
    with pytest.raises(ConfigError) as info:
        load(tmp_path, raw)
    assert info.value.problems == [
        "retention.max_age_days must be a positive number",
        "retention.max_responses must be a positive integer",
        "retention.max_session_turns must be a positive number",
    ]
    with pytest.raises(ConfigError, match="retention: unknown setting 'max_rows'"):
        load(tmp_path, {"retention": {"max_rows": 5}})


def trusted_key(**extra) -> dict:
    return {"name": "webui", "key_sha256": "a" * 64, "trusted_identity": True, **extra}


def test_identity_route_fields(tmp_path: Path) -> None:
    raw = {
        "keys": [trusted_key()],
        "routes": [
            {"openwebui_user_email": "alice@example.com", "profile": "default"},
            {"librechat_user_id": "65f0c0ffee", "librechat_conversation_id": "c-1", "profile": "default"},
        ],
    }
    s = load(tmp_path, raw)
    assert s.keys[0].trusted_identity is True
    assert [dict(r.match) for r in s.routes] == [
        {"openwebui_user_email": "alice@example.com"},
        {"librechat_user_id": "65f0c0ffee", "librechat_conversation_id": "c-1"},
    ]


@pytest.mark.parametrize(
    ("route", "keys", "problem"),
    [
        pytest.param(
            {"openwebui_user_email": "a@b.c"},
            [],
            "identity field, read only for keys with trusted_identity",
            id="no-trusted-key",
        ),
        pytest.param(
            {"openwebui_user_id": "u"},
            [{"name": "plain", "key_sha256": "b" * 64}],
            "no key has it",
            id="only-untrusted-keys",
        ),
        pytest.param({"openwebui_user_email": "josé@example.com"}, None, "is not ASCII", id="non-ascii"),
        pytest.param({"librechat_user_id": "{{LIBRECHAT_USER_ID}}"}, None, "placeholder", id="placeholder"),
        pytest.param({"openwebui_chat_id": ""}, None, "is empty", id="empty"),
        pytest.param({"user_id": "u" * 257}, None, "longer than 256", id="too-long"),
        pytest.param({"chat_id": "a\tb"}, None, "control characters", id="control-char"),
        pytest.param({"openwebui_user_name": "Alice"}, None, "unknown match field 'openwebui_user_name'", id="unknown"),
    ],
)
def test_route_values_that_could_never_match_are_refused(tmp_path: Path, route, keys, problem) -> None:
    raw = {"keys": [trusted_key()] if keys is None else keys, "routes": [{**route, "profile": "default"}]}
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load(tmp_path, raw)


def test_every_route_problem_is_reported(tmp_path: Path) -> None:
    raw = {
        "routes": [
            {"openwebui_user_email": "josé@example.com", "profile": "default"},
            {"librechat_user_id": "{{LIBRECHAT_USER_ID}}", "user_id": "", "profile": "default"},
        ]
    }
    with pytest.raises(ConfigError) as info:
        load(tmp_path, raw)
    problems = info.value.problems
    assert sum("is not ASCII" in p for p in problems) == 1
    assert sum("placeholder" in p for p in problems) == 1
    assert sum("is empty" in p for p in problems) == 1
    assert sum("no key has it" in p for p in problems) == 2
    assert sum("matches nothing" in p for p in problems) == 2
    assert len(problems) == 7


def test_trusted_identity_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"keys\[0\] \(webui\): trusted_identity must be true or false"):
        load(tmp_path, {"keys": [trusted_key(trusted_identity="yes")]})


def test_limits_and_per_profile_overrides(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        {
            "expose": ["default", "slow"],
            "timeouts": {"connect": 3, "read": 60},
            "max_concurrent": 40,
            "max_concurrent_per_profile": 10,
            "per_profile": {"slow": {"timeouts": {"read": 1800}, "max_concurrent": 2}},
            "max_header_bytes": 8192,
            "shutdown_grace": 0,
        },
    )
    assert (s.max_concurrent, s.max_header_bytes, s.shutdown_grace) == (40, 8192, 0)
    slow, other = s.limits_for("slow"), s.limits_for("default")
    assert (slow.timeouts.connect, slow.timeouts.read, slow.max_concurrent) == (3, 1800, 2)
    assert (other.timeouts.connect, other.timeouts.read, other.max_concurrent) == (3, 60, 10)
    defaults = load(tmp_path, {})
    assert (defaults.max_concurrent, defaults.max_concurrent_per_profile, defaults.shutdown_grace) == (512, 128, 20)
    assert defaults.max_header_bytes == 65536 and defaults.cors is None


def test_limit_problems_are_all_reported(tmp_path: Path) -> None:
    raw = {
        "expose": ["default"],
        "max_concurrent": 0,
        "max_concurrent_per_profile": 1.5,
        "shutdown_grace": -1,
        "max_header_bytes": "big",
        "per_profile": {"Bad": {}, "hidden": {"max_concurrent": 1}, "default": {"colour": 1}},
        "cors": {"allow_origins": ["ftp:/x", "*"], "allow_headers": "X-A"},
    }
    with pytest.raises(ConfigError) as info:
        load(tmp_path, raw)
    for expected in [
        "max_concurrent must be a positive number",
        "max_concurrent_per_profile must be a positive integer",
        "shutdown_grace must be a non-negative number",
        "max_header_bytes must be a positive number",
        "per_profile: 'Bad' is not a valid profile name",
        "per_profile.hidden: profile 'hidden' is not in expose",
        "per_profile.default: unknown setting 'colour' (known: timeouts, max_concurrent)",
        "cors.allow_headers must be a list of strings",
        "cors.allow_origins: 'ftp:/x' is not an origin",
    ]:
        assert any(problem.startswith(expected) for problem in info.value.problems), expected


def test_cors_settings(tmp_path: Path) -> None:
    s = load(tmp_path, {"cors": {"allow_origins": ["https://chat.example.com"], "allow_headers": ["X-Custom"]}})
    assert s.cors is not None
    assert (s.cors.allow_origins, s.cors.allow_headers, s.cors.max_age) == (
        ("https://chat.example.com",),
        ("X-Custom",),
        600,
    )
    with pytest.raises(ConfigError, match="must name at least one origin"):
        load(tmp_path, {"cors": {"allow_origins": []}})


def load_yaml(tmp_path: Path, text: str, environ: dict | None = None) -> Settings:
    """The config file as written, YAML spellings (``.nan``, ``.inf``, ``{}``) included."""
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return Settings.load(path, environ or {}, {})


def problems_of(tmp_path: Path, text: str, environ: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_yaml(tmp_path, text, environ)
    return info.value.problems


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("shutdown_grace: .inf", "shutdown_grace must be a non-negative number, not .inf", id="grace-inf"),
        pytest.param(
            "retention: {max_age_days: .nan}", "retention.max_age_days must be a positive number, not .nan", id="nan"
        ),
        pytest.param("timeouts: {read: .inf}", "timeouts.read must be a positive number, not .inf", id="read-inf"),
        pytest.param("reload_interval: .nan", "reload_interval must be a positive number, not .nan", id="reload-nan"),
        pytest.param("sse_keepalive: -.inf", "sse_keepalive must be a positive number", id="minus-inf"),
        pytest.param(
            "expose: [default, coder]\nper_profile: {coder: {timeouts: {read: .inf}}}",
            "per_profile.coder.timeouts.read must be a positive number, not .inf",
            id="per-profile-inf",
        ),
    ],
)
def test_infinite_and_nan_numbers_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    """``.inf`` passed ``check`` and then crashed ``serve``; ``.nan`` retention made
    every stored response expire at once."""
    assert problems_of(tmp_path, text) == [problem]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("keys: {}", "keys must be a list", id="keys-mapping"),
        pytest.param("routes: {}", "routes must be a list", id="routes-mapping"),
        pytest.param("timeouts: 0", "timeouts must be a mapping with connect and/or read", id="timeouts-0"),
        pytest.param("retention: 0", "retention must be a mapping with max_age_days, max_responses", id="retention-0"),
        pytest.param("per_profile: []", "per_profile must be a mapping", id="per-profile-list"),
        pytest.param("cors: []", "cors must be a mapping with allow_origins", id="cors-list"),
        pytest.param("hermes_home: ''", "hermes_home must be a path", id="home-empty"),
        pytest.param("model_aliases: ''", "model_aliases must be a list of strings", id="aliases-empty"),
        pytest.param(
            "expose: [default, coder]\nper_profile: {coder: {timeouts: 0}}",
            "per_profile.coder.timeouts must be a mapping with connect and/or read",
            id="per-profile-timeouts-0",
        ),
    ],
)
def test_falsy_values_of_the_wrong_type_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    """``keys: {}`` or ``timeouts: 0`` used to mean the defaults, silently: an operator
    who wrote ``keys: {}`` got an open server."""
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("timeouts: {conect: 5}", "timeouts: unknown setting 'conect'", id="timeouts"),
        pytest.param("cors: {allow_origins: ['*'], origins: []}", "cors: unknown setting 'origins'", id="cors"),
        pytest.param(
            "keys: [{name: k, key_sha256: " + "a" * 64 + ", profile: [default]}]",
            "keys[0] (k): unknown setting 'profile'",
            id="key",
        ),
        pytest.param(
            "per_profile: {default: {timeouts: {read: 5, write: 5}}}",
            "per_profile.default.timeouts: unknown setting 'write'",
            id="per-profile-timeouts",
        ),
    ],
)
def test_unknown_settings_are_refused_at_every_level(tmp_path: Path, text: str, problem: str) -> None:
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_null_is_the_same_as_absent_at_the_top_level(tmp_path: Path) -> None:
    """An empty YAML value (``timeouts:`` with nothing under it) is null: the default,
    except for ``default_profile``, where null means "no default"."""
    s = load_yaml(tmp_path, "keys:\nroutes:\ntimeouts:\nretention:\nport:\nexpose: [default]\n", {"HOME": "/x"})
    assert (s.keys, s.routes, s.timeouts, s.retention, s.port) == ((), (), Timeouts(), Retention(), 8642)


def test_shape_and_meaning_problems_are_reported_together(tmp_path: Path) -> None:
    """A shape problem in one section does not hide the problems of the others."""
    text = (
        "expose: [default]\n"
        "timeouts: {read: .nan}\n"
        "per_profile: {default: {max_concurrent: 0}, hidden: {}}\n"
        "routes: [{chat_id: c, profile: hidden}]\n"
    )
    assert problems_of(tmp_path, text) == [
        "timeouts.read must be a positive number, not .nan",
        "per_profile.default.max_concurrent must be a positive number",
        "routes[0]: profile 'hidden' is not in expose",
        "per_profile.hidden: profile 'hidden' is not in expose",
    ]


STORE_URL = "postgresql://hermes:hunter2-secret@db.internal:5432/hermes"


@pytest.mark.parametrize(
    ("text", "environ", "url"),
    [
        pytest.param("{}", {}, None, id="absent-is-sqlite"),
        pytest.param("store: sqlite", {}, None, id="sqlite"),
        pytest.param(f"store: {STORE_URL}", {}, STORE_URL, id="url"),
        pytest.param("store: {url_env: STORE}", {"STORE": STORE_URL}, STORE_URL, id="url-env"),
        pytest.param("store: postgres://h/db", {}, "postgres://h/db", id="postgres-scheme"),
    ],
)
def test_store_is_sqlite_or_a_postgresql_url(tmp_path: Path, text: str, environ: dict, url: str | None) -> None:
    store = load_yaml(tmp_path, text, environ).store
    assert store.url == url and (store.pool_size, store.timeout) == (10, 10.0)
    assert "hunter2" not in repr(store)


@pytest.mark.parametrize(
    ("text", "environ", "problem"),
    [
        pytest.param(
            "store: mysql://u:hunter2-secret@h/db",
            {},
            "store.url must be a postgresql:// URL (or the store: sqlite, the default)",
            id="other-scheme",
        ),
        pytest.param(
            "store: {url_env: STORE}", {}, "store: url_env STORE is not set in the environment", id="env-unset"
        ),
        pytest.param(
            "store: {url_env: STORE}",
            {"STORE": "hunter2-secret"},
            "store.url must be a postgresql:// URL (or the store: sqlite, the default)",
            id="env-not-a-url",
        ),
        pytest.param(
            f"store: {{url_env: STORE, url: '{STORE_URL}'}}",
            {"STORE": STORE_URL},
            "store needs one of url or url_env, not both",
            id="both",
        ),
        pytest.param("store: 5", {}, "store must be sqlite, a postgresql:// URL, or a mapping", id="number"),
        pytest.param("store: {pool_size: 0}", {}, "store.pool_size must be a positive number", id="pool"),
        pytest.param("store: {timeout: .inf}", {}, "store.timeout must be a positive number, not .inf", id="timeout"),
    ],
)
def test_store_problems_never_show_the_url(tmp_path: Path, text: str, environ: dict, problem: str) -> None:
    problems = problems_of(tmp_path, text, environ)
    assert any(p.startswith(problem) for p in problems), problems
    assert not any("hunter2" in p for p in problems)


def test_the_agent_section_and_its_problems(tmp_path: Path) -> None:
    keyed = {"keys": [{"name": "team", "key_env": "K"}], "expose": ["default", "coder"]}
    environ = {"K": "sk-team-0123456789abcdef"}
    agent = {"profiles": "*", "turn_timeout": 30, "per_profile": {"coder": {"toolsets": ["memory", "terminal"]}}}
    settings = load(tmp_path, {**keyed, "agent": agent}, environ)
    assert settings.agent.serves("default") and settings.agent.serves("coder")
    assert settings.agent.profile("coder").toolsets == ("memory", "terminal")
    assert settings.agent.profile("coder").turn_timeout == 30  # the section's, where the profile sets none
    assert settings.agent.profile("default").toolsets == ("memory", "skills", "session_search", "todo")
    assert not load(tmp_path, keyed, environ).agent.serves("default")  # no agent section: every profile direct
    agent = {"profiles": ["coder", "ghost"], "toolsets": ["memory", "terminal"], "per_profile": {"default": {}}}
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, {"expose": ["default", "coder"], "agent": agent})
    problems = exc.value.problems
    assert "agent.profiles: profile 'ghost' is not in expose" in problems
    assert "agent.per_profile.default: profile 'default' is not in agent.profiles" in problems
    assert any(p.startswith("agent.toolsets: 'terminal' reaches beyond the profile's own files") for p in problems)
    assert any(p.startswith("agent: profiles served by the Hermes agent need API keys") for p in problems)
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, {**keyed, "agent": {"profiles": "*", "idle_timeout": float("inf")}}, environ)
    assert exc.value.problems == ["agent.idle_timeout must be a positive number, not .inf"]


DELEGATION_BASE = (
    "expose: [default, researcher, coder, writer]\n"
    "keys: [{name: team, key_env: K}]\n"
    "agent: {profiles: [researcher, coder]}\n"
)


def test_delegation_is_off_by_default_and_read_as_written(tmp_path: Path) -> None:
    assert not load_yaml(tmp_path, DELEGATION_BASE, {"K": "k" * 20}).delegation
    text = DELEGATION_BASE + "delegation: {allow: {researcher: [coder, writer]}, max_depth: 3, timeout: 60}\n"
    rules = load_yaml(tmp_path, text, {"K": "k" * 20}).delegation
    assert rules.targets("researcher") == ("coder", "writer") and rules.targets("coder") == ()
    assert (rules.max_depth, rules.timeout) == (3, 60.0)


def test_every_delegation_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        "expose: [default, researcher, coder, writer]\n"
        "host: 192.0.2.7\n"
        "agent: {profiles: [researcher]}\n"
        "delegation: {allow: {researcher: [coder, hidden, Bad], writer: [coder], hidden: [coder], Nope: []}}\n"
    )
    assert problems_of(tmp_path, text) == [
        "agent: profiles served by the Hermes agent need API keys (keys or API_SERVER_KEY), also on 127.0.0.1: "
        "its tools act for whoever can send it a request",
        "delegation.allow.researcher: 'Bad' is not a valid profile name ([a-z0-9][a-z0-9_-]{0,63})",
        "delegation.allow.researcher: target 'hidden' is not in expose",
        "delegation.allow.writer: profile 'writer' is not in agent.profiles (only the Hermes agent can delegate)",
        "delegation.allow.hidden: profile 'hidden' is not in expose",
        "delegation.allow: 'Nope' is not a valid profile name",
        "delegation: a delegated turn runs as the caller's API key, so delegation needs API keys "
        "(keys or API_SERVER_KEY)",
        "delegation: host '192.0.2.7' is not reachable on loopback, where the agents call the server back: "
        "listen on 127.0.0.1, ::1, 0.0.0.0 or ::",
    ]


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        pytest.param("{max_depth: 0}", "delegation.max_depth must be a positive number", id="depth-zero"),
        pytest.param("{max_depth: 1.5}", "delegation.max_depth must be a positive integer", id="depth-fraction"),
        pytest.param("{allow: {researcher: coder}}", "delegation.allow.researcher must be a list", id="not-a-list"),
        pytest.param("{researcher: [coder]}", "delegation: unknown setting 'researcher'", id="flat"),
    ],
)
def test_delegation_shapes(tmp_path: Path, section: str, problem: str) -> None:
    problems = problems_of(tmp_path, DELEGATION_BASE + f"delegation: {section}\n", {"K": "k" * 20})
    assert len(problems) == 1 and problems[0].startswith(problem), problems


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "0.0.0.0", "::"])
def test_delegation_on_hosts_that_answer_on_loopback(tmp_path: Path, host: str) -> None:
    text = DELEGATION_BASE + f"host: '{host}'\ndelegation: {{allow: {{researcher: [coder]}}}}\n"
    assert load_yaml(tmp_path, text, {"K": "k" * 20}).delegation.targets("researcher") == ("coder",)
