"""The server configuration (docs/contract.md §2), validated into frozen dataclasses.

Sources, later ones winning: built-in defaults, the YAML file (``--config`` or
``HERMES_API_CONFIG``), command-line flags. ``API_SERVER_KEY`` in the environment adds
one key allowed every exposed profile. Relative paths in the file are relative to the
file. Every problem found is reported at once in ``ConfigError.problems``; the
checking itself is ``settings_schema`` (the file's shape, pydantic models) and
``settings_parser`` (what the settings mean for each other, and these dataclasses).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .profiles import DEFAULT_PROFILE

ALL = "*"
# Route match fields. The X-Hermes-* ones count for every caller; the identity fields
# are the user and chat ids that Open WebUI (ENABLE_FORWARD_USER_INFO_HEADERS) and
# LibreChat (custom endpoint `headers:` placeholders) send, and count only for keys with
# `trusted_identity: true`. headers.ROUTING_HEADERS and headers.IDENTITY_HEADERS map
# each field to its header.
HERMES_FIELDS = ("chat_id", "user_id", "thread_id")
IDENTITY_FIELDS = (
    "openwebui_user_id",
    "openwebui_user_email",
    "openwebui_chat_id",
    "librechat_user_id",
    "librechat_user_email",
    "librechat_conversation_id",
)
ROUTE_FIELDS = HERMES_FIELDS + IDENTITY_FIELDS
MAX_ROUTE_VALUE_CHARS = 256  # the longest routing header value accepted (headers.header_value)
# A template placeholder a client failed to expand, e.g. LibreChat's {{LIBRECHAT_USER_ID}}
# when it has no user (packages/api/src/utils/env.ts leaves it in place then).
PLACEHOLDER = re.compile(r"\{\{[^{}]*\}\}")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every reason, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class RateLimits:
    """What a key may spend (None: no such bound), in sliding windows ending now:
    ``rpm`` turns in 60 seconds, ``tpm`` input plus output tokens in 60 seconds,
    ``tokens_per_day`` the same in 24 hours (``quotas.py``)."""

    rpm: int | None = None
    tpm: int | None = None
    tokens_per_day: int | None = None

    def __bool__(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.tokens_per_day is not None


@dataclass(frozen=True, slots=True)
class APIKey:
    """A client API key. Only its SHA-256 ``digest`` is kept; ``profiles`` None = every
    exposed profile. ``trusted_identity`` lets identity headers feed ``routes``;
    ``metrics`` lets the key read ``GET /metrics``; ``limits`` bound all its turns,
    ``profile_limits`` its turns on one profile (``(profile, limits)`` pairs)."""

    name: str
    digest: bytes = field(repr=False)
    profiles: frozenset[str] | None = None
    trusted_identity: bool = False
    metrics: bool = False
    limits: RateLimits = RateLimits()
    profile_limits: tuple[tuple[str, RateLimits], ...] = ()
    # From the two above, for quotas.limited, asked on every turn: any limit on all of
    # the key's turns; the profiles with limits of their own.
    limited_everywhere: bool = field(init=False, repr=False, compare=False)
    limited_profiles: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limited_everywhere", bool(self.limits))
        object.__setattr__(self, "limited_profiles", frozenset(name for name, _ in self.profile_limits))


@dataclass(frozen=True, slots=True)
class RouteRule:
    """Send requests whose routing headers equal every pair in ``match`` to ``profile``."""

    match: tuple[tuple[str, str], ...]
    profile: str


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds, to the upstream: ``connect``; ``read`` = the longest silence between bytes."""

    connect: float = 5.0
    read: float = 600.0


@dataclass(frozen=True, slots=True)
class Retention:
    """What the response store keeps (docs/contract.md §7, ``retention``): rows older than
    ``max_age_days`` days go, and a stored response (chat-session turn) goes once
    ``max_responses`` (``max_session_turns``) newer ones have been stored, so at most
    that many are kept. None = no such bound."""

    max_age_days: float | None = 30.0
    max_responses: int | None = 10_000
    max_session_turns: int | None = 10_000


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where the response store lives: ``url`` None = SQLite, ``<state_dir>/responses.db``;
    a ``postgresql://`` URL (libpq's connection URI) = that database, which several
    processes and machines may share. The URL holds a password: it is never logged nor
    shown (not in ``repr`` either). ``pool_size``: database connections per process;
    ``timeout``: seconds a store call may take, waiting for a connection included,
    before it fails with 503 ``store_unavailable``."""

    url: str | None = field(default=None, repr=False)
    pool_size: int = 10
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class ProfileLimits:
    """One profile's upstream timeouts and cap on concurrent upstream requests: the
    server-wide values, overridden by ``per_profile.<name>`` in the config file."""

    timeouts: Timeouts = Timeouts()
    max_concurrent: int = 128


@dataclass(frozen=True, slots=True)
class CORS:
    """Cross-origin access for browsers (off unless ``cors.allow_origins`` is set).
    ``allow_headers`` are request headers allowed beyond the built-in ones."""

    allow_origins: tuple[str, ...]
    allow_headers: tuple[str, ...] = ()
    max_age: int = 600


# Hermes toolsets that touch nothing but the profile's own files (memories/, skills/,
# state.db) and the turn: the only ones ``agent.toolsets`` (every agent profile) may name.
# Any other toolset (terminal, file, code_execution, browser, cronjob, delegation, vision,
# web, ...) must be named for the one profile that gets it (``agent.per_profile``).
SAFE_TOOLSETS = ("memory", "skills", "session_search", "todo")


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """What one agent profile may do: its Hermes ``toolsets`` and its ``turn_timeout``
    (seconds from the turn's start to its answer's end)."""

    toolsets: tuple[str, ...] = SAFE_TOOLSETS
    turn_timeout: float = 600.0


@dataclass(frozen=True, slots=True)
class AgentRuntime:
    """The ``agent`` section: which profiles the real Hermes agent serves (``profiles``;
    None = every exposed profile, ``"*"``), in workers run by ``python`` (None = this
    interpreter). A worker is stopped after ``idle_timeout`` seconds without a turn and
    must say ``ready`` within ``startup_timeout``; ``env`` names variables of hermes-api's
    environment that every worker gets besides its own; ``spare_worker``: keep one worker
    started ahead, bound to the next profile that needs one (``agent/spare.py``;
    docs/agent.md)."""

    profiles: frozenset[str] | None = frozenset()
    python: str | None = None
    toolsets: tuple[str, ...] = SAFE_TOOLSETS
    turn_timeout: float = 600.0
    idle_timeout: float = 900.0
    startup_timeout: float = 60.0
    env: tuple[str, ...] = ()
    spare_worker: bool = True
    per_profile: Mapping[str, AgentProfile] = field(default_factory=dict)

    def serves(self, profile: str) -> bool:
        """True when ``profile`` (an exposed profile) is served by the agent runtime."""
        return self.profiles is None or profile in self.profiles

    def profile(self, name: str) -> AgentProfile:
        """The toolsets and turn timeout of agent profile ``name``."""
        return self.per_profile.get(name) or AgentProfile(self.toolsets, self.turn_timeout)


@dataclass(frozen=True, slots=True)
class DelegationRules:
    """The ``delegation`` section: which agent profile may hand a task to which exposed
    profiles (``allow``: ``{delegating profile: targets}``; nothing by default), how deep
    a chain may go (``max_depth``: at most that many turns in one chain, the client's
    own included, so 2 lets the client's profile delegate and its delegate not), and
    how long the delegating agent waits for one answer (``timeout``, seconds)
    (docs/delegation.md)."""

    allow: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_depth: int = 2
    timeout: float = 300.0

    def targets(self, profile: str) -> tuple[str, ...]:
        """The profiles ``profile`` may delegate to (none: it is offered no delegation tool)."""
        return self.allow.get(profile, ())

    def __bool__(self) -> bool:
        return any(self.allow.values())


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated server configuration; ``expose`` None means every valid profile."""

    hermes_home: Path
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8642
    expose: frozenset[str] | None = frozenset({DEFAULT_PROFILE})
    default_profile: str | None = DEFAULT_PROFILE
    model_aliases: frozenset[str] = frozenset({"hermes-agent"})
    keys: tuple[APIKey, ...] = ()
    routes: tuple[RouteRule, ...] = ()
    timeouts: Timeouts = Timeouts()
    max_body_bytes: int = 10 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    # Longer than the idle expiry of common clients' pools (httpx and the OpenAI SDK 5 s,
    # aiohttp 15 s, Node's undici 4 s) and of proxies (nginx upstream keepalive 60 s):
    # the client must close an idle connection first, or a request it sends just as
    # the server closes is reset before any answer (nginx's keepalive_timeout is 75 s).
    keep_alive_timeout: float = 75.0
    header_timeout: float = 15.0
    max_connections: int = 2048
    max_concurrent: int = 512
    max_concurrent_per_profile: int = 128
    per_profile: Mapping[str, ProfileLimits] = field(default_factory=dict)
    shutdown_grace: float = 20.0
    cors: CORS | None = None
    reload_interval: float = 1.0
    sse_keepalive: float = 15.0
    log_level: str = "info"
    log_format: str = "text"  # or "json": one JSON object per line (logs.py)
    metrics: bool = True  # record Prometheus metrics and serve GET /metrics
    retention: Retention = Retention()
    agent: AgentRuntime = AgentRuntime()
    record_usage: bool = True
    store: StoreConfig = StoreConfig()
    delegation: DelegationRules = DelegationRules()

    def limits_for(self, profile: str) -> ProfileLimits:
        """The timeouts and concurrency cap of ``profile`` (its override, else the defaults)."""
        found = self.per_profile.get(profile)
        if found is None:
            return ProfileLimits(self.timeouts, self.max_concurrent_per_profile)
        return found

    def home_problem(self) -> str | None:
        """Why there is nothing to serve from: ``hermes_home`` does not exist or is not a
        directory (with how to point at one); None when it is a directory."""
        if self.hermes_home.is_dir():
            return None
        what = "it is not a directory" if self.hermes_home.exists() else "it does not exist"
        return (
            f"no Hermes home at {self.hermes_home}: {what}. Point at one with --hermes-home DIR, "
            "hermes_home: in the config file, or HERMES_HOME (Hermes's own CLI creates ~/.hermes; "
            "`hermes-api demo` serves an example home)"
        )

    @property
    def metrics_keys(self) -> bool:
        """True when some key has ``metrics: true``: then ``/metrics`` needs one of them,
        else it answers loopback clients only."""
        return any(key.metrics for key in self.keys)

    @property
    def rate_limited(self) -> bool:
        """True when some key has ``rpm``, ``tpm`` or ``tokens_per_day`` (``quotas.py``)."""
        return any(key.limits or key.profile_limits for key in self.keys)

    @property
    def is_loopback(self) -> bool:
        """True when ``host`` only accepts connections from this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @classmethod
    def load(
        cls,
        path: Path | None,
        environ: Mapping[str, str],
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Settings from the YAML file at ``path`` (None = none), ``environ`` and
        ``overrides`` (command-line values, None entries ignored). Raises ``ConfigError``."""
        raw: dict[str, Any] = {}
        base = Path.cwd()
        if path is not None:
            try:
                loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            except OSError as exc:
                raise ConfigError([f"cannot read {path}: {exc.strerror}"]) from None
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" (line {mark.line + 1})" if mark else ""
                raise ConfigError([f"{path} is not valid YAML{where}"]) from None
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError([f"{path} must be a mapping"])
            raw = loaded or {}
            base = Path(path).resolve().parent
        raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
        from .settings_parser import SettingsParser  # it builds Settings: imported here, not at the top

        return SettingsParser(raw, environ, base).settings()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Settings from ``HERMES_API_CONFIG`` (if set) and ``environ``."""
        config = environ.get("HERMES_API_CONFIG")
        return cls.load(Path(config) if config else None, environ)
