"""The raw config mapping (the YAML file plus command-line values) checked into
``settings.Settings`` (DESIGN.md §2). One pass collects every problem, so ``check`` and
``serve`` report them all at once in ``settings.ConfigError``."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .profiles import DEFAULT_PROFILE, is_profile_name
from .settings import (
    ALL,
    CORS,
    IDENTITY_FIELDS,
    MAX_ROUTE_VALUE_CHARS,
    PLACEHOLDER,
    ROUTE_FIELDS,
    APIKey,
    ConfigError,
    ProfileLimits,
    Retention,
    RouteRule,
    Settings,
    Timeouts,
)

DEFAULT_TIMEOUTS = Timeouts()
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_ORIGIN = re.compile(r"https?://[^/\s]+")
_TOP_LEVEL = {
    "hermes_home",
    "host",
    "port",
    "expose",
    "default_profile",
    "model_aliases",
    "keys",
    "routes",
    "state_dir",
    "timeouts",
    "max_body_bytes",
    "max_header_bytes",
    "max_concurrent",
    "max_concurrent_per_profile",
    "per_profile",
    "shutdown_grace",
    "cors",
    "reload_interval",
    "sse_keepalive",
    "log_level",
    "retention",
}
RETENTION_FIELDS = {"max_age_days": float, "max_responses": int, "max_session_turns": int}
_PER_PROFILE_FIELDS = {"timeouts", "max_concurrent"}
_CORS_FIELDS = {"allow_origins", "allow_headers", "max_age"}


class SettingsParser:
    """One pass over the raw mapping that collects every problem before failing."""

    def __init__(self, raw: dict[str, Any], environ: Mapping[str, str], base: Path) -> None:
        self.raw, self.environ, self.base = raw, environ, base
        self.problems: list[str] = []

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def path(self, value: Any, name: str) -> Path | None:
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            self.fail(f"{name} must be a path")
            return None
        p = Path(os.path.expanduser(str(value)))
        return p if p.is_absolute() else (self.base / p).resolve()

    def number(self, value: Any, name: str, kind: type = float, *, zero: bool = False) -> Any:
        """A positive number (``zero``: or 0) of ``kind``, else None and a problem."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not zero):
            self.fail(f"{name} must be a {'non-negative' if zero else 'positive'} number")
            return None
        if kind is int and not isinstance(value, int):
            self.fail(f"{name} must be a positive integer")
            return None
        return kind(value)

    def names(self, value: Any, name: str) -> frozenset[str] | None:
        """A list of profile names, or "*" (returned as None)."""
        if value == ALL or value == [ALL]:
            return None
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            self.fail(f'{name} must be a list of profile names or "*"')
            return frozenset()
        bad = [v for v in value if not is_profile_name(v)]
        for v in bad:
            self.fail(f"{name}: {v!r} is not a valid profile name ([a-z0-9][a-z0-9_-]{{0,63}})")
        return frozenset(v for v in value if v not in bad)

    def settings(self) -> Settings:
        raw = self.raw
        for key in sorted(set(raw) - _TOP_LEVEL):
            self.fail(f"unknown setting {key!r}")
        env_home = self.environ.get("HERMES_HOME")
        home = self.path(raw.get("hermes_home") or env_home or "~/.hermes", "hermes_home")
        default = raw.get("default_profile", DEFAULT_PROFILE)
        if default is not None and not is_profile_name(default):
            self.fail(f"default_profile: {default!r} is not a valid profile name")
            default = None
        if "expose" in raw:
            expose = self.names(raw["expose"], "expose")
        else:
            expose = frozenset({default}) if default else frozenset()
        if expose is not None and default is not None and default not in expose:
            self.fail(f"default_profile {default!r} is not in expose")
        if expose == frozenset():
            self.fail("expose names no profile: nothing would be served")
        aliases = raw.get("model_aliases", ["hermes-agent"])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            self.fail("model_aliases must be a list of strings")
            aliases = []
        timeouts = self.timeouts(raw.get("timeouts") or {})
        host = raw.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            self.fail("host must be a host name or address")
        port = raw.get("port", 8642)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            self.fail("port must be an integer from 0 to 65535")
        log_level = str(raw.get("log_level", "info")).lower()
        if log_level not in {"critical", "error", "warning", "info", "debug"}:
            self.fail("log_level must be one of critical, error, warning, info, debug")
        keys = self.keys(raw.get("keys") or [], expose)
        routes = self.routes(raw.get("routes") or [], expose, trusted=any(k.trusted_identity for k in keys))
        state_dir = (
            self.path(raw["state_dir"], "state_dir") if "state_dir" in raw else (home / "hermes-api" if home else None)
        )
        max_body = self.number(raw.get("max_body_bytes", 10 * 1024 * 1024), "max_body_bytes", int)
        max_header = self.number(raw.get("max_header_bytes", 64 * 1024), "max_header_bytes", int)
        max_concurrent = self.number(raw.get("max_concurrent", 512), "max_concurrent", int)
        per_profile_cap = self.number(raw.get("max_concurrent_per_profile", 128), "max_concurrent_per_profile", int)
        per_profile = self.per_profile(raw.get("per_profile") or {}, expose, timeouts, per_profile_cap or 1)
        grace = self.number(raw.get("shutdown_grace", 20.0), "shutdown_grace", zero=True)
        cors = self.cors(raw["cors"]) if raw.get("cors") is not None else None
        reload_interval = self.number(raw.get("reload_interval", 1.0), "reload_interval")
        keepalive = self.number(raw.get("sse_keepalive", 15.0), "sse_keepalive")
        retention = self.retention(raw.get("retention") or {})
        if self.problems:
            raise ConfigError(self.problems)
        assert home is not None and state_dir is not None
        return Settings(
            hermes_home=home,
            state_dir=state_dir,
            host=host,
            port=port,
            expose=expose,
            default_profile=default,
            model_aliases=frozenset(aliases),
            keys=keys,
            routes=routes,
            timeouts=timeouts,
            max_body_bytes=max_body,
            max_header_bytes=max_header,
            max_concurrent=max_concurrent,
            max_concurrent_per_profile=per_profile_cap,
            per_profile=per_profile,
            shutdown_grace=grace,
            cors=cors,
            reload_interval=reload_interval,
            sse_keepalive=keepalive,
            log_level=log_level,
            retention=retention,
        )

    def retention(self, raw: Any) -> Retention:
        """``retention``: each of ``RETENTION_FIELDS`` a positive number, or null for no bound."""
        if not isinstance(raw, dict) or set(raw) - set(RETENTION_FIELDS):
            self.fail(f"retention must be a mapping with {', '.join(RETENTION_FIELDS)} (each a number or null)")
            return Retention()
        values = {}
        for key, value in raw.items():
            values[key] = None if value is None else self.number(value, f"retention.{key}", RETENTION_FIELDS[key])
        return Retention(**values)

    def timeouts(self, raw: Any, name: str = "timeouts", base: Timeouts = DEFAULT_TIMEOUTS) -> Timeouts:
        """``raw`` over ``base``: a mapping with ``connect`` and/or ``read`` seconds."""
        if not isinstance(raw, dict) or set(raw) - {"connect", "read"}:
            self.fail(f"{name} must be a mapping with connect and/or read (seconds)")
            return base
        values = {k: self.number(v, f"{name}.{k}") for k, v in raw.items()}
        return replace(base, **{k: v for k, v in values.items() if v is not None})

    def per_profile(
        self, raw: Any, expose: frozenset[str] | None, timeouts: Timeouts, cap: int
    ) -> dict[str, ProfileLimits]:
        """``per_profile: {<name>: {timeouts: {...}, max_concurrent: N}}`` over the defaults."""
        if not isinstance(raw, dict):
            self.fail("per_profile must be a mapping of profile name to settings")
            return {}
        found = {}
        for name, item in raw.items():
            where = f"per_profile.{name}"
            if not is_profile_name(name):
                self.fail(f"per_profile: {name!r} is not a valid profile name")
                continue
            if expose is not None and name not in expose:
                self.fail(f"{where}: profile {name!r} is not in expose")
            if not isinstance(item, dict) or set(item) - _PER_PROFILE_FIELDS:
                self.fail(f"{where} must be a mapping with timeouts and/or max_concurrent")
                continue
            profile_timeouts = self.timeouts(item.get("timeouts") or {}, f"{where}.timeouts", timeouts)
            profile_cap = self.number(item.get("max_concurrent", cap), f"{where}.max_concurrent", int)
            found[name] = ProfileLimits(profile_timeouts, profile_cap or cap)
        return found

    def cors(self, raw: Any) -> CORS | None:
        """``cors: {allow_origins: [...], allow_headers: [...], max_age: s}``."""
        if not isinstance(raw, dict) or set(raw) - _CORS_FIELDS:
            self.fail("cors must be a mapping with allow_origins, and optionally allow_headers and max_age")
            return None
        lists = {}
        for key in ("allow_origins", "allow_headers"):
            value = raw.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                self.fail(f"cors.{key} must be a list of strings")
                value = []
            lists[key] = tuple(value)
        for origin in lists["allow_origins"]:
            if origin != ALL and not _ORIGIN.fullmatch(origin):
                self.fail(f'cors.allow_origins: {origin!r} is not an origin (scheme://host[:port]) or "*"')
        if not lists["allow_origins"]:
            self.fail("cors.allow_origins must name at least one origin")
        max_age = self.number(raw.get("max_age", 600), "cors.max_age", int, zero=True)
        return CORS(lists["allow_origins"], lists["allow_headers"], 600 if max_age is None else max_age)

    def mappings(self, raw: Any, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(where, item)`` for each mapping of the list ``raw`` (``name[i]``); a problem
        for ``raw`` not being a list and for each item that is not a mapping."""
        if not isinstance(raw, list):
            self.fail(f"{name} must be a list")
            return
        for i, item in enumerate(raw):
            if isinstance(item, dict):
                yield f"{name}[{i}]", item
            else:
                self.fail(f"{name}[{i}] must be a mapping")

    def keys(self, raw: Any, expose: frozenset[str] | None) -> tuple[APIKey, ...]:
        keys: list[APIKey] = []
        for where, item in self.mappings(raw, "keys"):
            name = item.get("name")
            if not isinstance(name, str) or not name:
                self.fail(f"{where} needs a name")
                name = where
            where = f"{where} ({name})"
            unknown = set(item) - {"name", "key_env", "key_sha256", "profiles", "trusted_identity"}
            for key in sorted(unknown):
                self.fail(f"{where}: unknown field {key!r}")
            digest = self.key_digest(item, where)
            profiles = self.names(item.get("profiles", ALL), f"{where} profiles")
            if profiles and expose is not None:
                for p in sorted(profiles - expose):
                    self.fail(f"{where}: profile {p!r} is not in expose")
            trusted = item.get("trusted_identity", False)
            if not isinstance(trusted, bool):
                self.fail(f"{where}: trusted_identity must be true or false")
            if digest is not None:
                keys.append(APIKey(name, digest, profiles, trusted is True))
        server_key = self.environ.get("API_SERVER_KEY")
        if server_key:
            keys.append(APIKey("API_SERVER_KEY", hashlib.sha256(server_key.encode()).digest()))
        digests = [k.digest for k in keys]
        if len(set(digests)) != len(digests):
            self.fail("keys: two keys have the same value")
        return tuple(keys)

    def key_digest(self, item: dict[str, Any], where: str) -> bytes | None:
        key_env, key_sha = item.get("key_env"), item.get("key_sha256")
        if (key_env is None) == (key_sha is None):
            self.fail(f"{where} needs exactly one of key_env or key_sha256")
            return None
        if key_env is not None:
            value = self.environ.get(key_env) if isinstance(key_env, str) else None
            if not value:
                self.fail(f"{where}: key_env {key_env} is not set in the environment")
                return None
            return hashlib.sha256(value.encode()).digest()
        if not isinstance(key_sha, str) or not _SHA256_HEX.fullmatch(key_sha.lower()):
            self.fail(f"{where}: key_sha256 must be 64 hex digits")
            return None
        return bytes.fromhex(key_sha)

    def routes(self, raw: Any, expose: frozenset[str] | None, *, trusted: bool) -> tuple[RouteRule, ...]:
        """The ``routes`` list. ``trusted``: some key has ``trusted_identity: true``; without
        one, a rule on an identity field could never match, which is reported."""
        rules = []
        for where, item in self.mappings(raw, "routes"):
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
