"""Profile: one Hermes profile directory, read as-is (docs/contract.md §1).

A Hermes home is the profile ``default``; ``<home>/profiles/<name>/`` are the named
profiles, each with ``config.yaml``, ``.env``, ``SOUL.md``, ``memories/MEMORY.md``,
``memories/USER.md`` and ``profile.yaml``. Names are only ever matched against
``PROFILE_NAME`` and looked up among the directories listed here: request data never
becomes a path.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from dotenv import dotenv_values

from .persona import MEMORY_CHAR_LIMIT, USER_CHAR_LIMIT, Persona, parse_entries, render_persona, soul_char_limit
from .providers import UnsupportedProviderError
from .runtime_provider import Runtime as ProviderRuntime
from .runtime_provider import Secrets, resolve_runtime

Runtime = Literal["direct", "agent"]  # who answers a profile's turns (turns.Turns)
PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
DEFAULT_PROFILE = "default"
PROFILE_FILES = (
    "config.yaml",
    ".env",
    "SOUL.md",
    "memories/MEMORY.md",
    "memories/USER.md",
    "profile.yaml",
)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_ENV_REF = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}")

# (mtime_ns, size) of each of PROFILE_FILES, -1 for both when absent, packed: ~130 bytes
# per profile where a tuple of tuples of ints took ~600 (10,000 profiles: ~5 MB).
_SIGNATURE = struct.Struct(f"<{2 * len(PROFILE_FILES)}q")
Signature = bytes


@dataclass(frozen=True, slots=True)
class Profile:
    """A loaded profile: what one request needs to run a turn.

    ``model`` is the upstream model id, ``provider`` Hermes's provider id
    (``custom:<name>`` for a named endpoint), ``base_url`` the provider's
    OpenAI-compatible root (``…/v1``), ``api_key`` None when no key is sent, ``key_var``
    the variable the key came from (None for none, or a key written in config.yaml: a
    worker process needs only that one), ``max_tokens`` the default completion limit or
    None, ``persona`` the rendered system prompt, ``created`` the Unix time (s) of
    config.yaml's last change, ``config_warnings`` what ``hermes-api check`` says about
    the configuration (``warnings`` adds the persona's), ``runtime`` who answers its
    turns: its provider (``direct``) or its Hermes agent (``agent``, then ``model``,
    ``base_url`` and ``api_key`` may be empty: Hermes resolves them in the worker).
    """

    name: str
    home: Path
    model: str
    provider: str
    base_url: str
    api_key: str | None = field(repr=False)
    persona_source: str | Callable[[], str | Persona] = field(repr=False)
    max_tokens: int | None = None
    description: str = ""
    created: int = 0
    key_var: str | None = None
    config_warnings: tuple[str, ...] = ()
    runtime: Runtime = "direct"
    _persona: list[bytes] = field(default_factory=list, init=False, repr=False, compare=False)
    _persona_notes: list[str] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def persona(self) -> str:
        """The system prompt. ``persona_source`` is the text, or (as ``load_profile``
        makes it) a reader of SOUL.md and the memories, called on first use and kept:
        a Profile is one version of its files, and 10,000 rendered personas would cost
        a second of startup that profiles never used would not repay. Kept as UTF-8:
        Hermes's ``═`` rules make CPython store the whole text at 2 bytes a character
        (10,000 personas: 14.7 MB as text, ~11 MB as UTF-8; decoding one costs ~1 µs).
        Raises ``ProfileError`` when a file cannot be read."""
        if not self._persona:
            source = self.persona_source
            rendered = Persona(source) if isinstance(source, str) else source()
            rendered = Persona(rendered) if isinstance(rendered, str) else rendered
            self._persona_notes.extend(rendered.notes)
            self._persona.append(rendered.text.encode())
        return self._persona[0].decode()

    @property
    def persona_notes(self) -> tuple[str, ...]:
        """What the persona left out: a blocked SOUL.md or memory entry, a cut SOUL.md.
        Reads the persona if not yet read (``ProfileError``)."""
        self.persona  # noqa: B018
        return tuple(self._persona_notes)

    @property
    def warnings(self) -> tuple[str, ...]:
        """``config_warnings``, then ``persona_notes``: what ``hermes-api check`` prints."""
        return self.config_warnings + self.persona_notes

    @property
    def chat_completions_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


class ProfileError(Exception):
    """A profile that cannot be served; ``str()`` is the reason, free of secrets."""


def is_profile_name(name: object) -> bool:
    """True for a valid profile name (``re.fullmatch``: a trailing newline is invalid)."""
    return isinstance(name, str) and PROFILE_NAME.fullmatch(name) is not None


def profile_home(hermes_home: Path, name: str) -> Path:
    """The directory of profile ``name``; ``name`` must already be a valid name."""
    if not is_profile_name(name):
        raise ValueError(f"invalid profile name {name!r}")
    return hermes_home if name == DEFAULT_PROFILE else hermes_home / "profiles" / name


def list_profile_names(hermes_home: Path) -> list[str]:
    """``default`` and every directory under ``profiles/`` with a valid name, sorted."""
    names = {DEFAULT_PROFILE}
    try:
        with os.scandir(hermes_home / "profiles") as entries:
            names.update(e.name for e in entries if is_profile_name(e.name) and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        pass
    return sorted(names)


def signature(home: Path) -> Signature:
    """``(mtime_ns, size)`` of each profile file, -1 where absent, packed: a cheap
    change test (compare with ``==``)."""
    base = os.fspath(home) + os.sep  # plain strings: pathlib cost a third of a 10,000-profile load
    values: list[int] = []
    for rel in PROFILE_FILES:
        try:
            st = os.stat(base + rel)
        except OSError:
            values += (-1, -1)
        else:
            values += (st.st_mtime_ns, st.st_size)
    return _SIGNATURE.pack(*values)


def _file_stats(sig: Signature) -> dict[str, tuple[int, int] | None]:
    """``signature``'s figures by file name, None for absent files."""
    values = _SIGNATURE.unpack(sig)
    return {
        rel: None if values[2 * i + 1] < 0 else (values[2 * i], values[2 * i + 1])
        for i, rel in enumerate(PROFILE_FILES)
    }


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ProfileError(f"cannot read {os.path.basename(path)}: {exc.strerror}") from None


def _parse_yaml(text: str, name: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_YAML_LOADER) if text.strip() else {}
    except yaml.YAMLError as exc:
        # Never echo the offending line: config.yaml may hold an api_key.
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ProfileError(f"{name} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProfileError(f"{name} must be a mapping")
    return data


def _read_dotenv(path: str) -> dict[str, str]:
    """The ``.env`` file's variables (python-dotenv). Interpolation copies the whole
    process environment once per value, so it runs only when some value has ``${``
    (without one it changes nothing)."""
    values = dotenv_values(path, interpolate=False)
    if any("${" in v for v in values.values() if v):
        values = dotenv_values(path)
    return {k: v for k, v in values.items() if v is not None}


def expand_env_refs(value: Any, lookup: Callable[[str], str | None]) -> Any:
    """``value`` with ``${VAR}`` / ``${env:VAR}`` in every string replaced by
    ``lookup(VAR)``; unresolved references stay verbatim (hermes-agent
    ``hermes_cli/config.py`` ``_expand_env_vars``). Keys and non-strings are untouched."""
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: lookup(m.group(1)) or m.group(0), value)
    if isinstance(value, dict):
        return {k: expand_env_refs(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env_refs(v, lookup) for v in value]
    return value


def _model_section(config: Mapping[str, Any]) -> dict[str, Any]:
    model = config.get("model")
    if isinstance(model, str):
        model = {"default": model}
    if not isinstance(model, dict):
        raise ProfileError("config.yaml has no model (a string or a mapping with 'default')")
    model_id = model.get("default") or model.get("model") or model.get("name")
    if model_id is not None and not isinstance(model_id, str):
        raise ProfileError("config.yaml model.default must be a string")
    # Hermes's older spellings (hermes_cli/config.py _normalize_root_model_keys).
    model = {
        **model,
        "base_url": model.get("base_url") or model.get("api_base"),
        "api_key": model.get("api_key") or model.get("api"),
        "key_env": model.get("key_env") or model.get("api_key_env"),
    }
    for key in ("provider", "base_url", "api_key", "key_env"):
        if model.get(key) is not None and not isinstance(model[key], str):
            raise ProfileError(f"config.yaml model.{key} must be a string")
    unresolved = _ENV_REF.search(model.get("base_url") or "")
    if unresolved:
        raise ProfileError(f"model.base_url refers to ${{{unresolved.group(1)}}}, which is not set")
    base_url = model.get("base_url")
    if base_url and not base_url.startswith(("http://", "https://")):
        raise ProfileError("model.base_url must start with http:// or https://")
    max_tokens = model.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ProfileError("config.yaml model.max_tokens must be a positive integer")
    return {**model, "default": (model_id or "").strip()}


def _memory_settings(config: Mapping[str, Any]) -> tuple[bool, bool, int, int]:
    memory = config.get("memory") or {}
    if not isinstance(memory, dict):
        raise ProfileError("config.yaml memory must be a mapping")
    limits = []
    for key, default in (("memory_char_limit", MEMORY_CHAR_LIMIT), ("user_char_limit", USER_CHAR_LIMIT)):
        value = memory.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ProfileError(f"config.yaml memory.{key} must be a positive integer")
        limits.append(value)
    return (
        memory.get("memory_enabled", True) is not False,
        memory.get("user_profile_enabled", True) is not False,
        limits[0],
        limits[1],
    )


@dataclass(frozen=True, slots=True)
class _PersonaFiles:
    """Reads and renders a profile's persona (``Profile.persona_source``): the profile
    directory (with a trailing separator), which files to read, the memory and SOUL.md
    limits in characters."""

    base: str
    soul: bool
    memory: bool
    user: bool
    memory_limit: int
    user_limit: int
    soul_limit: int

    def __call__(self) -> Persona:
        return render_persona(
            _read_text(self.base + "SOUL.md") if self.soul else "",
            parse_entries(_read_text(self.base + "memories/MEMORY.md")) if self.memory else (),
            parse_entries(_read_text(self.base + "memories/USER.md")) if self.user else (),
            memory_char_limit=self.memory_limit,
            user_char_limit=self.user_limit,
            soul_char_limit=self.soul_limit,
            soul_path=self.base + "SOUL.md",
        )


def load_profile(
    name: str,
    hermes_home: Path,
    environ: Mapping[str, str],
    sig: Signature | None = None,
    *,
    runtime: Runtime = "direct",
) -> Profile:
    """Load profile ``name`` from ``hermes_home``, to be served by ``runtime``.

    Secrets come from the profile's ``.env`` (python-dotenv) first, then ``environ``;
    ``os.environ`` is never written, so profiles never see each other's keys. Raises
    ``ProfileError`` with a reason when the profile cannot be served (no model, an
    unsupported or unknown provider, a missing key, a malformed file). The ``agent``
    runtime serves providers hermes-api cannot call itself (Anthropic's API, OAuth
    logins...): Hermes resolves those in the profile's worker, so a provider problem is
    then a warning. ``sig``, the ``signature`` just taken, spares a ``stat`` per file
    and says which are absent.
    """
    home = profile_home(hermes_home, name)
    base = os.fspath(home) + os.sep
    if not os.path.isdir(base):
        raise ProfileError(f"{home} is not a directory")
    present = _file_stats(signature(home) if sig is None else sig)

    def text(rel: str) -> str:
        return _read_text(base + rel) if present[rel] is not None else ""

    dotenv = _read_dotenv(base + ".env") if present[".env"] is not None else {}
    config = _parse_yaml(text("config.yaml"), "config.yaml")
    config = expand_env_refs(config, lambda var: dotenv.get(var) or environ.get(var))
    model = _model_section(config)
    try:
        provider = resolve_runtime(model, config, Secrets(dotenv, environ, f"{home / '.env'} or the environment"))
    except ValueError as exc:  # UnsupportedProviderError too
        reason = f"unsupported: {exc}" if isinstance(exc, UnsupportedProviderError) else str(exc)
        if runtime != "agent":
            raise ProfileError(reason) from None
        provider = ProviderRuntime(
            str(model.get("provider") or "auto"), "", None, warnings=(f"only the Hermes agent can serve it: {reason}",)
        )
    model_id = model["default"] or provider.model
    if not model_id and runtime != "agent":  # Hermes picks the provider's default model itself
        raise ProfileError("config.yaml model has no 'default' model id")

    memory_on, user_on, memory_limit, user_limit = _memory_settings(config)
    persona = _PersonaFiles(
        base,
        present["SOUL.md"] is not None,
        memory_on and present["memories/MEMORY.md"] is not None,
        user_on and present["memories/USER.md"] is not None,
        memory_limit,
        user_limit,
        soul_char_limit(config.get("context_file_max_chars"), model.get("context_length")),
    )
    try:  # optional metadata; Hermes never fails on it (hermes_cli/profiles.py)
        meta = _parse_yaml(text("profile.yaml"), "profile.yaml")
    except ProfileError:
        meta = {}
    config_stat = present["config.yaml"]
    created = config_stat[0] // 1_000_000_000 if config_stat else 0
    return Profile(
        name=name,
        home=home,
        model=model_id or "",
        provider=provider.provider,
        base_url=provider.base_url,
        api_key=provider.api_key,
        persona_source=persona,
        max_tokens=model.get("max_tokens") or provider.max_tokens,
        description=str(meta.get("description") or ""),
        created=created,
        key_var=provider.key_var,
        config_warnings=provider.warnings,
        runtime=runtime,
    )
