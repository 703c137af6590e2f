"""The raw config mapping (the YAML file plus command-line values) checked into
``settings.Settings``, every problem reported at once in ``settings.ConfigError``.

Two passes. ``settings_schema.ConfigFile`` (pydantic) checks the shape: every type and
range, every unknown key, at every level. ``SettingsParser`` then checks what the
settings mean for each other: profile names, ``expose`` and ``default_profile``, the
keys (their values from the environment, no value twice), each ``routes`` rule (it
must be able to match), ``per_profile``; and builds ``Settings``. A shape problem in one
setting does not hide the problems of the others: the setting with the problem (for
``per_profile``, the entry) is left out, the rest validated again, and the second pass
skips only the checks that need what was left out. How to add a section: the
``settings_schema`` docstring.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .profiles import is_profile_name
from .settings import (
    IDENTITY_FIELDS,
    MAX_ROUTE_VALUE_CHARS,
    PLACEHOLDER,
    ROUTE_FIELDS,
    SAFE_TOOLSETS,
    APIKey,
    ConfigError,
    ProfileLimits,
    RateLimits,
    RouteRule,
    Settings,
    Timeouts,
)
from .settings_schema import AgentSection, ConfigFile, KeySection, Section

_SETTINGS_FIELDS = frozenset(f.name for f in fields(Settings))
# Mappings of sections (per_profile): an entry with a problem is left out, not the whole mapping.
_ENTRY_FIELDS = frozenset(name for name, f in ConfigFile.model_fields.items() if get_origin(f.annotation) is dict)


class SettingsParser:
    """One run over the raw mapping that collects every problem before failing."""

    def __init__(self, raw: dict[str, Any], environ: Mapping[str, str], base: Path) -> None:
        self.raw, self.environ, self.base = raw, environ, base
        self.problems: list[str] = []

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def settings(self) -> Settings:
        """The ``Settings`` of the raw mapping. Raises ``ConfigError`` with every problem."""
        config, invalid = self.validate()
        default, expose = self.exposure(config, invalid)
        keys = self.keys([] if "keys" in invalid else config.keys, expose)
        trusted = "keys" in invalid or any(k.trusted_identity for k in keys)  # unknown: no complaint
        routes = self.routes(config.routes, expose, trusted=trusted)
        per_profile = self.per_profile(config, expose)
        if "agent" not in invalid:
            self.agent(config.agent, expose, keys)
        if "delegation" not in invalid:
            profiles = config.agent.profiles
            agents = None if profiles is None else frozenset(profiles)
            self.delegation(config, expose, agents, keys, checked_agents="agent" not in invalid)
        limited = [k.name for k in keys if k.limits or k.profile_limits]
        if limited and not config.record_usage:
            self.fail(f"keys {', '.join(limited)}: rpm, tpm and tokens_per_day count the usage records: "
                      "they need record_usage: true")  # fmt: skip
        if self.problems:
            raise ConfigError(self.problems)
        home = self.path(config.hermes_home or self.environ.get("HERMES_HOME") or "~/.hermes")
        converted = {
            "hermes_home": home,
            "state_dir": self.path(config.state_dir) if config.state_dir else home / "hermes-api",
            "expose": expose,
            "default_profile": default,
            "model_aliases": frozenset(config.model_aliases),
            "keys": keys,
            "routes": routes,
            "per_profile": per_profile,
        }
        rest = (name for name in ConfigFile.model_fields if name in _SETTINGS_FIELDS and name not in converted)
        return Settings(**converted, **{name: built(getattr(config, name)) for name in rest})

    def validate(self) -> tuple[ConfigFile, set[str]]:
        """The file's shape: ``(config, the top-level settings left out for a problem)``."""
        context = {"environ": self.environ}
        try:
            return ConfigFile.model_validate(self.raw, context=context), set()
        except ValidationError as exc:
            errors = exc.errors()
        self.problems += problems(errors, self.raw)
        rest, invalid = dict(self.raw), set()
        for error in errors:
            if not error["loc"]:
                continue
            top, *inner = error["loc"]
            entries = rest.get(str(top))
            if top in _ENTRY_FIELDS and inner and isinstance(entries, dict):
                rest[str(top)] = {k: v for k, v in entries.items() if k != inner[0]}
            else:
                rest.pop(str(top), None)
                invalid.add(str(top))
        try:
            return ConfigFile.model_validate(rest, context=context), invalid
        except ValidationError:  # not expected: no shape check looks at another setting
            raise ConfigError(self.problems) from None

    def path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (self.base / p).resolve()

    def names(self, value: tuple[str, ...] | None, name: str) -> frozenset[str] | None:
        """The valid profile names of ``value`` (None: every profile); a problem for each other."""
        if value is None:
            return None
        for v in value:
            if not is_profile_name(v):
                self.fail(f"{name}: {v!r} is not a valid profile name ([a-z0-9][a-z0-9_-]{{0,63}})")
        return frozenset(v for v in value if is_profile_name(v))

    def exposure(self, config: ConfigFile, invalid: set[str]) -> tuple[str | None, frozenset[str] | None]:
        """``(default_profile, expose)``; ``expose`` None (every profile) also when its shape
        was wrong, so that nothing is reported as missing from it."""
        default = None if "default_profile" in invalid else config.default_profile
        if default is not None and not is_profile_name(default):
            self.fail(f"default_profile: {default!r} is not a valid profile name")
            default = None
        if "expose" in invalid or ("default_profile" in invalid and "expose" not in config.model_fields_set):
            return default, None
        if "expose" in config.model_fields_set:
            expose = self.names(config.expose, "expose")
        else:
            expose = frozenset({default}) if default else frozenset()
        if expose is not None and default is not None and default not in expose:
            self.fail(f"default_profile {default!r} is not in expose")
        if expose == frozenset():
            self.fail("expose names no profile: nothing would be served")
        return default, expose

    def keys(self, items: list[KeySection], expose: frozenset[str] | None) -> tuple[APIKey, ...]:
        """The API keys, ``API_SERVER_KEY`` last; each value once at most."""
        keys: list[APIKey] = []
        for i, item in enumerate(items):
            where = f"keys[{i}] ({item.name})"
            profiles = self.names(item.profiles, f"{where} profiles")
            if profiles and expose is not None:
                for p in sorted(profiles - expose):
                    self.fail(f"{where}: profile {p!r} is not in expose")
            if item.key_env is not None:
                digest = hashlib.sha256(self.environ[item.key_env].encode()).digest()
            else:
                digest = bytes.fromhex(str(item.key_sha256))
            limits = RateLimits(item.rpm, item.tpm, item.tokens_per_day)
            by_profile = self.key_profile_limits(item, where, profiles, expose)
            keys.append(APIKey(item.name, digest, profiles, item.trusted_identity, item.metrics, limits, by_profile))
        names = [k.name for k in keys]
        for name in sorted({n for n in names if names.count(n) > 1}):
            self.fail(f"keys: two keys are named {name!r} (names identify keys in metrics, logs, usage and limits)")
        server_key = self.environ.get("API_SERVER_KEY")
        if server_key:
            keys.append(APIKey("API_SERVER_KEY", hashlib.sha256(server_key.encode()).digest()))
        digests = [k.digest for k in keys]
        if len(set(digests)) != len(digests):
            self.fail("keys: two keys have the same value")
        return tuple(keys)

    def key_profile_limits(
        self, item: KeySection, where: str, profiles: frozenset[str] | None, expose: frozenset[str] | None
    ) -> tuple[tuple[str, RateLimits], ...]:
        """A key's ``per_profile`` limits, for profiles it may use."""
        found = []
        for name, section in item.per_profile.items():
            if not is_profile_name(name):
                self.fail(f"{where} per_profile: {name!r} is not a valid profile name")
            elif (profiles is not None and name not in profiles) or (expose is not None and name not in expose):
                self.fail(f"{where} per_profile: the key may not use profile {name!r}")
            else:
                found.append((name, section.build()))
        return tuple(found)

    def per_profile(self, config: ConfigFile, expose: frozenset[str] | None) -> dict[str, ProfileLimits]:
        """``per_profile``: each entry over the server-wide timeouts and cap."""
        found = {}
        base = config.timeouts.build()
        for name, item in config.per_profile.items():
            if not is_profile_name(name):
                self.fail(f"per_profile: {name!r} is not a valid profile name")
                continue
            if expose is not None and name not in expose:
                self.fail(f"per_profile.{name}: profile {name!r} is not in expose")
            timeouts: Timeouts = replace(base, **{k: getattr(item.timeouts, k) for k in item.timeouts.model_fields_set})
            set_cap = "max_concurrent" in item.model_fields_set
            found[name] = ProfileLimits(timeouts, item.max_concurrent if set_cap else config.max_concurrent_per_profile)
        return found

    def agent(self, section: AgentSection, expose: frozenset[str] | None, keys: tuple[APIKey, ...]) -> None:
        """``agent``: its profiles exposed; OS-touching toolsets only per profile; API keys
        configured, because an agent with tools is code execution for whoever holds one
        (on loopback too)."""
        names = self.names(section.profiles, "agent.profiles")
        for name in sorted(names - expose if names and expose is not None else ()):
            self.fail(f"agent.profiles: profile {name!r} is not in expose")
        for name in section.per_profile:
            if not is_profile_name(name):
                self.fail(f"agent.per_profile: {name!r} is not a valid profile name")
            elif names is not None and name not in names:
                self.fail(f"agent.per_profile.{name}: profile {name!r} is not in agent.profiles")
        for toolset in section.toolsets:
            if toolset not in SAFE_TOOLSETS:
                self.fail(
                    f"agent.toolsets: {toolset!r} reaches beyond the profile's own files (only "
                    f"{', '.join(SAFE_TOOLSETS)} may apply to every agent profile); name it in "
                    "agent.per_profile.<profile>.toolsets for the profile that needs it"
                )
        if (names is None or names) and not keys:
            self.fail(
                "agent: profiles served by the Hermes agent need API keys (keys or API_SERVER_KEY), "
                "also on 127.0.0.1: its tools act for whoever can send it a request"
            )

    def delegation(
        self,
        config: ConfigFile,
        expose: frozenset[str] | None,
        agents: frozenset[str] | None,
        keys: tuple[APIKey, ...],
        *,
        checked_agents: bool,
    ) -> None:
        """``delegation``: a delegating profile is an exposed agent profile (``agents``
        None: every one, or unknown when the ``agent`` section was invalid, then
        ``checked_agents`` is False), its targets exposed profiles; API keys configured,
        because a delegated turn runs as the caller's key; the server reachable on
        loopback, where the agents' workers call it back."""
        section = config.delegation
        for name, targets in section.allow.items():
            where = f"delegation.allow.{name}"
            if not is_profile_name(name):
                self.fail(f"delegation.allow: {name!r} is not a valid profile name")
                continue
            if expose is not None and name not in expose:
                self.fail(f"{where}: profile {name!r} is not in expose")
            elif checked_agents and agents is not None and name not in agents:
                self.fail(f"{where}: profile {name!r} is not in agent.profiles (only the Hermes agent can delegate)")
            for target in self.names(targets, where) or ():
                if expose is not None and target not in expose:
                    self.fail(f"{where}: target {target!r} is not in expose")
        if not any(section.allow.values()):
            return
        if not keys:
            self.fail(
                "delegation: a delegated turn runs as the caller's API key, so delegation needs API keys "
                "(keys or API_SERVER_KEY)"
            )
        if not loopback_reachable(config.host):
            self.fail(
                f"delegation: host {config.host!r} is not reachable on loopback, where the agents call the "
                "server back: listen on 127.0.0.1, ::1, 0.0.0.0 or ::"
            )

    def routes(
        self, items: list[dict[str, Any]], expose: frozenset[str] | None, *, trusted: bool
    ) -> tuple[RouteRule, ...]:
        """The ``routes`` list. ``trusted``: some key has ``trusted_identity: true``; without
        one, a rule on an identity field could never match, which is reported."""
        rules = []
        for i, item in enumerate(items):
            where = f"routes[{i}]"
            profile = item.get("profile")
            if not is_profile_name(profile):
                self.fail(f"{where} needs a valid profile")
                continue
            if expose is not None and profile not in expose:
                self.fail(f"{where}: profile {profile!r} is not in expose")
            match = []
            for key, value in item.items():
                if key == "profile":
                    continue
                if key not in ROUTE_FIELDS:
                    self.fail(f"{where}: unknown match field {key!r} (use {', '.join(ROUTE_FIELDS)})")
                elif isinstance(value, bool) or not isinstance(value, (str, int)):
                    self.fail(f"{where}: {key} must be a string")
                elif problem := self.route_value_problem(key, str(value)):
                    self.fail(f"{where}: {key} {problem}, so the rule could never match")
                else:
                    match.append((key, str(value)))
                if key in IDENTITY_FIELDS and not trusted:
                    self.fail(
                        f"{where}: {key} is an identity field, read only for keys with "
                        "trusted_identity: true, and no key has it"
                    )
            if not match:
                self.fail(f"{where} matches nothing: give at least one of {', '.join(ROUTE_FIELDS)}")
            rules.append(RouteRule(tuple(match), profile))
        return tuple(rules)

    @staticmethod
    def route_value_problem(key: str, value: str) -> str | None:
        """Why no request header could ever carry ``value`` (None if one can): the
        rules of ``headers.header_value`` and, for identity fields, ``headers.identity_value``."""
        if not value:
            return "is empty (an empty header counts as absent)"
        if len(value) > MAX_ROUTE_VALUE_CHARS:
            return f"is longer than {MAX_ROUTE_VALUE_CHARS} characters"
        if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
            return "contains control characters"
        if key in IDENTITY_FIELDS and not value.isascii():
            return "is not ASCII (identity headers must be)"
        if key in IDENTITY_FIELDS and PLACEHOLDER.search(value):
            return "holds a {{...}} placeholder (unexpanded identity headers are refused)"
        return None


def loopback_reachable(host: str) -> bool:
    """True when a server bound to ``host`` answers on a loopback address: loopback
    itself, or every address (``0.0.0.0``, ``::``)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def built(value: Any) -> Any:
    """``value`` with every ``Section`` in it built (``Section.build``): a list becomes a tuple."""
    if isinstance(value, Section):
        return value.build()
    if isinstance(value, dict):
        return {k: built(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(built(v) for v in value)
    return value


def problems(errors: list[ErrorDetails], raw: Mapping[str, Any]) -> list[str]:
    """One line per error of ``ConfigFile``'s validation of ``raw``, naming the setting:
    the shape checks' own messages, and pydantic's (an unknown key, a list where a
    mapping belongs) in the same words."""
    return [_describe(error, raw) for error in errors]


def _describe(error: ErrorDetails, raw: Mapping[str, Any]) -> str:
    loc, kind = error["loc"], error["type"]
    if kind == "setting":
        return str(error.get("ctx", {})["problem"]).replace("{where}", where(loc, raw))
    if kind == "extra_forbidden":
        if len(loc) == 1:
            return f"unknown setting {loc[0]!r}"
        section = section_at(loc[:-1])
        known = f" (known: {', '.join(section.model_fields)})" if section else ""
        return f"{where(loc[:-1], raw)}: unknown setting {loc[-1]!r}{known}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        section = section_at(loc)
        names = list(section.model_fields) if section else []
        listed = f" with {', '.join(names[:-1])} and/or {names[-1]}" if len(names) > 1 else ""
        return f"{where(loc, raw)} must be a mapping{listed}"
    if kind == "list_type":
        return f"{where(loc, raw)} must be a list"
    if kind == "missing":
        return f"{where(loc, raw)} is required"
    return f"{where(loc, raw)}: {error['msg']}"


def where(loc: tuple[int | str, ...], raw: Mapping[str, Any]) -> str:
    """``loc`` as the user wrote it: ``per_profile.coder.timeouts.read``,
    ``keys[1] (webui): trusted_identity`` (a list item's ``name``, when it has one)."""
    out, node, labelled = "", raw, False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            name = node.get("name") if isinstance(node, dict) else None
            labelled = isinstance(name, str) and bool(name)
            out += f" ({name})" if labelled else ""
            continue
        out += (": " if labelled else "." if out else "") + str(part)
        node, labelled = node.get(part) if isinstance(node, dict) else None, False
    return out


def section_at(loc: tuple[int | str, ...]) -> type[Section] | None:
    """The ``Section`` class that validates the value at ``loc``, if one does."""
    kind: Any = ConfigFile
    for part in loc:
        kind = _unwrap(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            field = kind.model_fields.get(str(part))
            if field is None:
                return None
            kind = field.annotation
        elif get_origin(kind) in (list, dict):
            kind = get_args(kind)[-1]
        else:
            return None
    kind = _unwrap(kind)
    return kind if isinstance(kind, type) and issubclass(kind, Section) else None


def _unwrap(kind: Any) -> Any:
    """``X`` from ``X | None``."""
    if get_origin(kind) in (Union, UnionType):
        kind = next(a for a in get_args(kind) if a is not type(None))
    return kind
