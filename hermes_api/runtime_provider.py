"""Where a profile's turns go: the provider, its base URL, the key and where the key came from.

Hermes's rules (hermes-agent 0.19.0 ``hermes_cli/runtime_provider.py``
``resolve_runtime_provider`` and ``hermes_cli/auth.py`` ``resolve_provider``), for what
hermes-api serves:

- ``model.provider: custom:<name>`` (what ``hermes model`` saves for a named endpoint), or a
  bare name that is not one of Hermes's own provider ids, is an entry of the top-level
  ``providers:`` mapping (matched by key or ``name``) or of the older ``custom_providers:``
  list (matched by ``name``), with its URL, key and default model (``_get_named_custom_provider``).
- ``provider: auto`` (or none) without a ``base_url``: the provider whose key is set, in
  Hermes's order (``OPENROUTER_API_KEY`` or ``OPENAI_API_KEY`` mean OpenRouter, then
  ``providers.HERMES_PROVIDERS`` in order).
- ``custom`` (and its aliases), ``auto`` with a ``base_url``: that URL, with the configured
  key, else only a key whose provider owns the URL's host (``providers.host_key_vars``):
  Hermes never sends ``OPENAI_API_KEY`` or ``OPENROUTER_API_KEY`` to another host, and
  neither does hermes-api. The ``warnings`` say when a key in ``.env`` is left unused.

Secrets are read from the profile's ``.env`` first, then the process environment, and only
values Hermes counts as usable (``providers.usable_secret``). Errors are ``ValueError``
(``UnsupportedProviderError`` for providers that do not speak OpenAI's wire), with a
reason free of secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .providers import (
    ALIASES,
    AUTO_OPENROUTER_VARS,
    HERMES_PROVIDER_IDS,
    HERMES_PROVIDERS,
    PROVIDER_KEY_VARS,
    PROVIDERS,
    UNSUPPORTED,
    UnsupportedProviderError,
    host_key_vars,
    usable_secret,
)

OPENROUTER_URL = "https://openrouter.ai/api/v1"


@dataclass(frozen=True, slots=True)
class Secrets:
    """A profile's secrets: its ``.env`` values over the process environment's; ``where``
    names both for messages."""

    dotenv: Mapping[str, str]
    environ: Mapping[str, str]
    where: str = ".env or the environment"

    def get(self, name: str) -> str | None:
        """The usable value of ``name`` (stripped), or None."""
        for source in (self.dotenv, self.environ):
            value = source.get(name)
            if usable_secret(value):
                return value.strip()
        return None

    def first(self, names: tuple[str, ...]) -> tuple[str | None, str | None]:
        """``(value, name)`` of the first of ``names`` set, ``(None, None)`` if none is."""
        for name in names:
            value = self.get(name)
            if value is not None:
                return value, name
        return None, None


@dataclass(frozen=True, slots=True)
class Runtime:
    """The resolved provider. ``provider`` is the id (``custom:<name>`` for a named
    endpoint), ``api_key`` None when none is sent, ``key_var`` the variable it came from
    (None for a key written in config.yaml), ``model`` and ``max_tokens`` a named
    endpoint's defaults, ``warnings`` what ``hermes-api check`` should say."""

    provider: str
    base_url: str
    api_key: str | None
    key_var: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    warnings: tuple[str, ...] = ()


def resolve_runtime(model: Mapping[str, Any], config: Mapping[str, Any], secrets: Secrets) -> Runtime:
    """The provider for the ``model:`` section (normalised by ``profiles``) of ``config``.
    Raises ``ValueError`` (or ``UnsupportedProviderError``) when it cannot be served."""
    requested = (model.get("provider") or "auto").strip().lower()
    block = config.get("providers", {}).get(requested) if isinstance(config.get("providers"), dict) else None
    if isinstance(block, dict) and block.get("enabled", True) is False:
        raise ValueError(f"provider '{requested}' is disabled in config.yaml (providers.{requested}.enabled: false)")
    named = find_custom_provider(requested, config)
    if named is not None:
        return _named_runtime(requested, named, model, secrets)
    if requested.startswith("custom:"):
        raise ValueError(
            f"model.provider is '{requested}', but config.yaml has no providers: (or custom_providers:) "
            f"entry named '{requested[len('custom:') :]}' with a URL"
        )
    base_url = model.get("base_url")
    if requested == "auto":
        return _custom_runtime("custom", base_url, model, secrets, auto=True) if base_url else _auto_runtime(secrets)
    pid = ALIASES.get(requested, requested)
    if pid in UNSUPPORTED:
        raise UnsupportedProviderError(f"provider '{pid}' {UNSUPPORTED[pid]}")
    provider = PROVIDERS.get(pid)
    if provider is None:
        raise ValueError(f"unknown provider '{pid}'")
    if not provider.base_url:
        if not base_url:
            raise ValueError(f"provider '{pid}' needs model.base_url")
        return _custom_runtime(pid, base_url, model, secrets, auto=False)
    api_key, key_var = _configured_key(model, secrets)
    if api_key is None:
        api_key, key_var = secrets.first(provider.key_vars)
    if api_key is None:
        raise ValueError(f"no API key for provider '{pid}': set {' or '.join(provider.key_vars)} in {secrets.where}")
    return Runtime(pid, (base_url or provider.base_url).rstrip("/"), api_key, key_var)


def _configured_key(model: Mapping[str, Any], secrets: Secrets) -> tuple[str | None, str | None]:
    """``model.api_key``, or the variable ``model.key_env`` names (which must be set)."""
    if model.get("api_key"):
        return model["api_key"], None
    if model.get("key_env"):
        value = secrets.get(model["key_env"])
        if value is None:
            raise ValueError(f"model.key_env names {model['key_env']}, which is not set")
        return value, model["key_env"]
    return None, None


def _custom_runtime(pid: str, base_url: str, model: Mapping[str, Any], secrets: Secrets, *, auto: bool) -> Runtime:
    """An OpenAI-compatible URL: the configured key, else one whose provider owns the host."""
    base_url = base_url.rstrip("/")
    api_key, key_var = _configured_key(model, secrets)
    if api_key is None:
        api_key, key_var = secrets.first(host_key_vars(base_url))
    label = "provider auto with model.base_url" if auto else f"provider {model.get('provider')}"
    warnings = () if api_key is not None else _unused_keys(label, base_url, secrets, auto=auto)
    return Runtime(pid, base_url, api_key, key_var, warnings=warnings)


def _unused_keys(
    label: str, base_url: str, secrets: Secrets, hint: str = "model.api_key or model.key_env", *, auto: bool = False
) -> tuple[str, ...]:
    """A warning when provider keys sit in ``.env`` (under ``auto``, where the profile
    asked for a key to be found, in the environment too) while none goes to ``base_url``."""
    found = [f"{name} in .env" for name in PROVIDER_KEY_VARS if usable_secret(secrets.dotenv.get(name))]
    if auto:
        found += [
            f"{name} in the environment"
            for name in PROVIDER_KEY_VARS
            if usable_secret(secrets.environ.get(name)) and not usable_secret(secrets.dotenv.get(name))
        ]
    if not found:
        return ()
    verb = "is" if len(found) == 1 else "are"
    return (
        f"{label} sends no API key to {base_url}: {', '.join(found)} {verb} present but unused "
        f"(Hermes sends a provider's key only to that provider's own host); set {hint} if the endpoint needs a key",
    )


def _auto_runtime(secrets: Secrets) -> Runtime:
    """``provider: auto`` and no base URL: the provider whose key is set (auth.py
    ``resolve_provider``: OpenAI or OpenRouter keys first, then the registry's order)."""
    if any(secrets.get(name) for name in AUTO_OPENROUTER_VARS):
        base_url = (secrets.get("CUSTOM_BASE_URL") or secrets.get("OPENROUTER_BASE_URL") or OPENROUTER_URL).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("CUSTOM_BASE_URL or OPENROUTER_BASE_URL must start with http:// or https://")
        api_key, key_var = secrets.first(host_key_vars(base_url))
        if api_key is None and base_url == OPENROUTER_URL:
            # Hermes would send OPENAI_API_KEY to OpenRouter (runtime_provider.py
            # _resolve_openrouter_runtime); an OpenAI key never goes to another host here.
            raise ValueError(
                "provider auto picks OpenRouter when OPENAI_API_KEY is set, as Hermes does, but the key "
                "is OpenAI's and is not sent to openrouter.ai: set model.provider: openai-api, or set "
                "OPENROUTER_API_KEY"
            )
        warnings = (
            ()
            if api_key is not None
            else _unused_keys("provider auto", base_url, secrets, "OPENROUTER_API_KEY", auto=True)
        )
        return Runtime("openrouter", base_url, api_key, key_var, warnings=warnings)
    for pid, key_vars in HERMES_PROVIDERS:
        api_key, key_var = secrets.first(key_vars)
        if api_key is None or pid in ("copilot", "lmstudio"):  # never auto-selected (auth.py)
            continue
        chosen = f"chosen by provider auto from {key_var}"
        pid = ALIASES.get(pid, pid)
        if pid in UNSUPPORTED:
            raise UnsupportedProviderError(f"provider '{pid}' ({chosen}) {UNSUPPORTED[pid]}")
        provider = PROVIDERS.get(pid)
        if provider is None or not provider.base_url:
            raise ValueError(f"provider '{pid}' ({chosen}) is not one hermes-api serves")
        return Runtime(pid, provider.base_url, api_key, key_var)
    raise ValueError(
        "model.provider is 'auto' (or absent), model.base_url is not set, and no provider key "
        "(OPENROUTER_API_KEY, GOOGLE_API_KEY, DEEPSEEK_API_KEY, ...) is set: set model.provider and its key"
    )


def _named_runtime(requested: str, entry: dict[str, Any], model: Mapping[str, Any], secrets: Secrets) -> Runtime:
    """A ``providers:`` / ``custom_providers:`` endpoint (``_resolve_named_custom_runtime``)."""
    label = requested if requested.startswith("custom:") else f"custom:{_normalise(entry['name'])}"
    base_url = entry["base_url"].strip().rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"provider '{label}' has URL that does not start with http:// or https://")
    mode = str(entry.get("api_mode") or entry.get("transport") or "").strip().lower()
    if mode in ("anthropic_messages", "bedrock_converse"):
        raise UnsupportedProviderError(f"provider '{label}' has transport {mode}, not OpenAI's chat completions")
    # The entry's own key (Hermes seeds its credential pool with it, and the pool is
    # tried first: agent/credential_pool.py _seed_custom_pool), then its key_env, then a
    # key whose provider owns the host.
    inline = str(entry.get("api_key") or "").strip()
    key_env = str(entry.get("key_env") or "").strip()
    candidates = [
        (inline if usable_secret(inline) else None, None),
        (secrets.get(key_env), key_env) if key_env else (None, None),
        secrets.first(host_key_vars(base_url)),
    ]
    api_key, key_var = next(((k, v) for k, v in candidates if k is not None), (None, None))
    warnings = [
        f"providers entry '{entry['name']}': {field} is not sent by hermes-api"
        for field in ("extra_headers", "extra_body")
        if entry.get(field)
    ]
    if api_key is None:
        warnings += _unused_keys(f"provider {label}", base_url, secrets, f"a key_env in its {_where(entry)} entry")
    default_model = entry.get("default_model") or entry.get("model")
    limit = next((entry[k] for k in ("max_output_tokens", "max_tokens") if _positive_int(entry.get(k))), None)
    return Runtime(
        label,
        base_url,
        api_key,
        key_var,
        model=default_model.strip() if isinstance(default_model, str) and default_model.strip() else None,
        max_tokens=limit,
        warnings=tuple(warnings),
    )


def _where(entry: Mapping[str, Any]) -> str:
    return "custom_providers:" if entry.get("_list") else "providers:"


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _normalise(name: str) -> str:
    return name.strip().lower().replace(" ", "-")


def find_custom_provider(requested: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The endpoint ``requested`` names, as ``{"name", "base_url", ...}`` plus the entry's
    own fields (``_list`` set for a ``custom_providers:`` entry), or None. A bare name
    that is one of Hermes's own provider ids is never a custom endpoint
    (``runtime_provider.py`` ``_get_named_custom_provider``)."""
    wanted = _normalise(requested)
    if not wanted or wanted == "auto":
        return None
    if wanted != "custom" and not wanted.startswith("custom:") and wanted in HERMES_PROVIDER_IDS:
        return None
    providers = config.get("providers")
    for key, entry in providers.items() if isinstance(providers, dict) else ():
        if not isinstance(entry, dict) or entry.get("enabled", True) is False:
            continue
        url = entry.get("api") or entry.get("url") or entry.get("base_url")
        names = [str(key)] + ([entry["name"]] if isinstance(entry.get("name"), str) and entry["name"] else [])
        for name in names:
            if isinstance(url, str) and url and wanted in {name, _normalise(name), f"custom:{_normalise(name)}"}:
                return {**entry, "name": name, "base_url": url}
    listed = config.get("custom_providers")
    for entry in listed if isinstance(listed, list) else ():
        if not isinstance(entry, dict):
            continue
        name, url = entry.get("name"), entry.get("base_url")
        if (
            isinstance(name, str)
            and isinstance(url, str)
            and wanted in {_normalise(name), f"custom:{_normalise(name)}"}
        ):
            return {**entry, "name": name, "base_url": url, "_list": True}
    return None
