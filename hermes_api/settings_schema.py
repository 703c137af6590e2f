"""The shape of ``hermes-api.yaml``: one pydantic model per section, every value typed.

``ConfigFile`` is the whole file. Each mapping in it is a ``Section``: unknown keys are
refused, and every value has a type below that says in one line what it must be
(``PositiveNumber`` refuses ``.nan``, ``.inf``, ``true`` and ``"5"``). Nothing here looks
at another setting, the environment aside (``key_env`` must be set): what one setting
means for another (a profile in ``expose``, a route that can match) is checked in
``settings_parser``, which also turns the result into ``settings.Settings``.

Messages are templates: ``{where}`` becomes the setting's path
(``per_profile.coder.timeouts.read must be a positive number``); ``settings_parser``
renders pydantic's own errors (an unknown key, a list where a mapping belongs) the same way.

Adding a section, e.g. ``metrics: {enabled: true, path: /metrics}``:

1. a frozen dataclass ``Metrics`` in ``settings.py`` and a field ``metrics: Metrics =
   Metrics()`` on ``Settings`` (what the rest of the code reads);
2. here, ``class MetricsSection(Section)`` with ``target = Metrics`` and one typed field
   per key, its default taken from the dataclass (``default(Metrics, "enabled")``);
3. one field on ``ConfigFile``: ``metrics: MetricsSection = MetricsSection()``.

``settings_parser`` builds every field of ``ConfigFile`` into the ``Settings`` field of
the same name (``Section.build``), so that is all, unless the section refers to other
settings (profiles, key names): that check goes in ``settings_parser.SettingsParser``.
A section keyed by name (``limits: {<key name>: {...}}``) or a list of mappings is a
``dict[str, X]`` or ``list[X]`` of a section ``X``: built into a dict, or a tuple, of
``X.target``. A mapping keyed by profile has an entry with a problem left out alone
(``settings_parser``), so the other entries are still checked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import MISSING
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .settings import (
    ALL,
    CORS,
    AgentProfile,
    AgentRuntime,
    DelegationRules,
    RateLimits,
    Retention,
    Settings,
    StoreConfig,
    Timeouts,
)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMATS = ("text", "json")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_ORIGIN = re.compile(r"https?://[^/\s]+")
POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")  # libpq's connection URIs


def problem(template: str) -> PydanticCustomError:
    """A shape problem; ``{where}`` in ``template`` becomes the setting's path."""
    return PydanticCustomError("setting", "{problem}", {"problem": template})


def default(target: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``target``: the file's defaults are the settings'."""
    field = target.__dataclass_fields__[name]  # type: ignore[attr-defined]
    return field.default_factory() if field.default is MISSING else field.default


def _number(kind: type, *, zero: bool = False, nullable: bool = False) -> PlainValidator:
    """A finite number > 0 (``zero``: >= 0) of ``kind`` (an int: no fraction); ``nullable``: or null."""
    sign = "non-negative" if zero else "positive"

    def check(value: Any) -> Any:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not zero):
            raise problem(f"{{where}} must be a {sign} number")
        if not math.isfinite(value):
            raise problem(f"{{where}} must be a {sign} number, not {'.nan' if math.isnan(value) else '.inf'}")
        if kind is int and not isinstance(value, int):
            raise problem(f"{{where}} must be a {sign} integer")
        return kind(value)

    return PlainValidator(check)


def _text(template: str) -> PlainValidator:
    """A non-empty string, else ``template``."""

    def check(value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise problem(template)
        return value

    return PlainValidator(check)


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise problem("{where} must be an integer from 0 to 65535")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise problem("{where} must be true or false")
    return value


def _log_level(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise problem(f"{{where}} must be one of {', '.join(LOG_LEVELS)}")
    return value.lower()


def _log_format(value: Any) -> str:
    if value not in LOG_FORMATS:
        raise problem(f"{{where}} must be one of {', '.join(LOG_FORMATS)}")
    return str(value)


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise problem("{where} must be a list of strings")
    return tuple(value)


def _profile_names(value: Any) -> tuple[str, ...] | None:
    """``"*"`` (None: every profile), ``"a,b"`` or a list of strings. Whether each is a
    valid profile name is ``settings_parser``'s check: a bad name must not hide the rest."""
    if value == ALL or value == [ALL]:
        return None
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise problem('{where} must be a list of profile names or "*"')
    return tuple(value)


def _optional_name(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise problem("{where} must be a profile name or null")
    return value


def _origins(value: Any) -> tuple[str, ...]:
    origins = _strings(value)
    if not origins:
        raise problem("{where} must name at least one origin")
    bad = [o for o in origins if o != ALL and not _ORIGIN.fullmatch(o)]
    if bad:
        names = ", ".join(repr(o) for o in bad)
        raise problem(
            f"{{where}}: {names} {'is not an origin' if len(bad) == 1 else 'are not origins'} "
            '(scheme://host[:port]) or "*"'
        )
    return origins


def _postgresql_url(value: Any) -> str:
    # Never echoed: it holds the database password.
    if not isinstance(value, str) or not value.startswith(POSTGRESQL_SCHEMES):
        raise problem("{where} must be a postgresql:// URL (or the store: sqlite, the default)")
    return value


PositiveNumber = Annotated[float, _number(float)]
NonNegativeNumber = Annotated[float, _number(float, zero=True)]
PositiveInt = Annotated[int, _number(int)]
NonNegativeInt = Annotated[int, _number(int, zero=True)]
PositiveNumberOrNull = Annotated[float | None, _number(float, nullable=True)]
PositiveIntOrNull = Annotated[int | None, _number(int, nullable=True)]
Port = Annotated[int, PlainValidator(_port)]
Boolean = Annotated[bool, PlainValidator(_boolean)]
LogLevel = Annotated[str, PlainValidator(_log_level)]
LogFormat = Annotated[str, PlainValidator(_log_format)]
Strings = Annotated[tuple[str, ...], PlainValidator(_strings)]
ProfileNames = Annotated[tuple[str, ...] | None, PlainValidator(_profile_names)]
OptionalName = Annotated[str | None, PlainValidator(_optional_name)]
Origins = Annotated[tuple[str, ...], PlainValidator(_origins)]
Host = Annotated[str, _text("{where} must be a host name or address")]
Name = Annotated[str, _text("{where} must be a non-empty string")]
# Null is refused when given; None is only the default, "not given".
PathOrAbsent = Annotated[str | None, _text("{where} must be a path")]
NameOrAbsent = Annotated[str | None, _text("{where} must be a non-empty string")]
PostgreSQLURL = Annotated[str | None, PlainValidator(_postgresql_url)]


class Section(BaseModel):
    """A mapping of the file. ``target``: the ``settings`` dataclass ``build()`` makes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    target: ClassVar[Callable[..., Any] | None] = None

    def build(self) -> Any:
        """``target`` with every field of this section, by name."""
        assert self.target is not None, f"{type(self).__name__} has no target"
        return self.target(**{name: getattr(self, name) for name in type(self).model_fields})


class TimeoutsSection(Section):
    target = Timeouts
    connect: PositiveNumber = default(Timeouts, "connect")
    read: PositiveNumber = default(Timeouts, "read")


class RetentionSection(Section):
    target = Retention
    max_age_days: PositiveNumberOrNull = default(Retention, "max_age_days")
    max_responses: PositiveIntOrNull = default(Retention, "max_responses")
    max_session_turns: PositiveIntOrNull = default(Retention, "max_session_turns")


class CORSSection(Section):
    target = CORS
    allow_origins: Origins = Field(default=(), validate_default=True)
    allow_headers: Strings = default(CORS, "allow_headers")
    max_age: NonNegativeInt = default(CORS, "max_age")


class StoreSection(Section):
    """``store``: ``sqlite`` (the default), a ``postgresql://`` URL, or a mapping with
    ``url`` or ``url_env`` (the environment variable holding the URL), ``pool_size``
    and ``timeout``. ``url_env`` is read here, so ``url`` is the URL either way."""

    target = StoreConfig
    url: PostgreSQLURL = None
    url_env: NameOrAbsent = None
    pool_size: PositiveInt = default(StoreConfig, "pool_size")
    timeout: PositiveNumber = default(StoreConfig, "timeout")

    @model_validator(mode="before")
    @classmethod
    def _url_from_text_or_environment(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, str):
            data = {} if data == "sqlite" else {"url": data}
        if not isinstance(data, dict):
            raise problem("{where} must be sqlite, a postgresql:// URL, or a mapping with url or url_env")
        if data.get("url_env") is None:
            return data
        if data.get("url") is not None:
            raise problem("{where} needs one of url or url_env, not both")
        name = data["url_env"]
        value = (info.context or {}).get("environ", {}).get(name) if isinstance(name, str) else None
        if not value:
            raise problem(f"{{where}}: url_env {name} is not set in the environment")
        return {**data, "url": value}

    def build(self) -> StoreConfig:
        return StoreConfig(url=self.url, pool_size=self.pool_size, timeout=self.timeout)


class ProfileLimitsSection(Section):
    """``per_profile.<name>``: what it sets overrides the server-wide values."""

    timeouts: TimeoutsSection = TimeoutsSection()
    max_concurrent: PositiveInt = default(Settings, "max_concurrent_per_profile")


class RateLimitsSection(Section):
    """A key's limits on one profile (``keys[].per_profile.<name>``)."""

    target = RateLimits
    rpm: PositiveIntOrNull = None
    tpm: PositiveIntOrNull = None
    tokens_per_day: PositiveIntOrNull = None


class KeySection(Section):
    """One of ``keys``; ``profiles`` None = every exposed profile; ``rpm``, ``tpm`` and
    ``tokens_per_day`` bound all its turns, ``per_profile`` its turns on one profile."""

    name: Name
    key_env: NameOrAbsent = None
    key_sha256: NameOrAbsent = None
    profiles: ProfileNames = None
    trusted_identity: Boolean = False
    metrics: Boolean = False
    rpm: PositiveIntOrNull = None
    tpm: PositiveIntOrNull = None
    tokens_per_day: PositiveIntOrNull = None
    per_profile: dict[str, RateLimitsSection] = {}

    @field_validator("key_env")
    @classmethod
    def _key_env_is_set(cls, value: str, info: ValidationInfo) -> str:
        if not (info.context or {}).get("environ", {}).get(value):
            raise problem(f"{{where}} {value} is not set in the environment")
        return value

    @field_validator("key_sha256")
    @classmethod
    def _is_hex_digest(cls, value: str) -> str:
        if not _SHA256_HEX.fullmatch(value):
            raise problem("{where} must be 64 hex digits")
        return value.lower()

    @model_validator(mode="after")
    def _one_source(self) -> KeySection:
        if (self.key_env is None) == (self.key_sha256 is None):
            raise problem("{where} needs exactly one of key_env or key_sha256")
        return self


class AgentProfileSection(Section):
    """``agent.per_profile.<name>``: unset values are the ``agent`` section's."""

    toolsets: Strings | None = None
    turn_timeout: PositiveNumber | None = None


class AgentSection(Section):
    """``agent``: the profiles the real Hermes agent serves, and how (settings_parser
    checks the names, the toolsets and that keys are configured)."""

    profiles: ProfileNames = ()
    python: NameOrAbsent = None
    toolsets: Strings = default(AgentRuntime, "toolsets")
    turn_timeout: PositiveNumber = default(AgentRuntime, "turn_timeout")
    idle_timeout: PositiveNumber = default(AgentRuntime, "idle_timeout")
    startup_timeout: PositiveNumber = default(AgentRuntime, "startup_timeout")
    env: Strings = ()
    spare_worker: Boolean = default(AgentRuntime, "spare_worker")
    per_profile: dict[str, AgentProfileSection] = {}

    def build(self) -> AgentRuntime:
        per_profile = {
            name: AgentProfile(
                self.toolsets if item.toolsets is None else item.toolsets,
                self.turn_timeout if item.turn_timeout is None else item.turn_timeout,
            )
            for name, item in self.per_profile.items()
        }
        profiles = None if self.profiles is None else frozenset(self.profiles)
        values = {name: getattr(self, name) for name in ("python", "toolsets", "turn_timeout", "idle_timeout",
                                                         "startup_timeout", "env", "spare_worker")}  # fmt: skip
        return AgentRuntime(profiles=profiles, per_profile=per_profile, **values)


class DelegationSection(Section):
    """``delegation``: ``allow`` maps a delegating profile to the profiles it may hand
    tasks to (settings_parser checks the names: agent profiles delegate, to exposed
    profiles, and keys are configured)."""

    target = DelegationRules
    allow: dict[str, Strings] = {}
    max_depth: PositiveInt = default(DelegationRules, "max_depth")
    timeout: PositiveNumber = default(DelegationRules, "timeout")


class ConfigFile(Section):
    """The whole file, command-line values merged in. At the top level null is the
    same as absent (an empty YAML value), except ``default_profile: null``: no default."""

    hermes_home: PathOrAbsent = None  # None: $HERMES_HOME, else ~/.hermes
    state_dir: PathOrAbsent = None  # None: <hermes_home>/hermes-api
    host: Host = default(Settings, "host")
    port: Port = default(Settings, "port")
    expose: ProfileNames = ()  # absent: default_profile alone (settings_parser)
    default_profile: OptionalName = default(Settings, "default_profile")
    model_aliases: Strings = tuple(default(Settings, "model_aliases"))
    keys: list[KeySection] = []
    routes: list[dict[str, Any]] = []  # match fields vary: settings_parser reads each rule
    timeouts: TimeoutsSection = TimeoutsSection()
    max_body_bytes: PositiveInt = default(Settings, "max_body_bytes")
    max_header_bytes: PositiveInt = default(Settings, "max_header_bytes")
    keep_alive_timeout: PositiveNumber = default(Settings, "keep_alive_timeout")
    header_timeout: PositiveNumber = default(Settings, "header_timeout")
    max_connections: PositiveInt = default(Settings, "max_connections")
    max_concurrent: PositiveInt = default(Settings, "max_concurrent")
    max_concurrent_per_profile: PositiveInt = default(Settings, "max_concurrent_per_profile")
    per_profile: dict[str, ProfileLimitsSection] = {}
    shutdown_grace: NonNegativeNumber = default(Settings, "shutdown_grace")
    cors: CORSSection | None = None
    reload_interval: PositiveNumber = default(Settings, "reload_interval")
    sse_keepalive: PositiveNumber = default(Settings, "sse_keepalive")
    log_level: LogLevel = default(Settings, "log_level")
    log_format: LogFormat = default(Settings, "log_format")
    metrics: Boolean = default(Settings, "metrics")
    retention: RetentionSection = RetentionSection()
    agent: AgentSection = AgentSection()
    record_usage: Boolean = default(Settings, "record_usage")
    store: StoreSection = StoreSection()
    delegation: DelegationSection = DelegationSection()

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k == "default_profile"}
        return data
