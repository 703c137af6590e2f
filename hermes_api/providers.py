"""Hermes provider ids -> OpenAI-compatible base URL and the variables holding the key.

The ids, base URLs and key variables are Hermes's own (hermes-agent
``hermes_cli/auth.py``, ``PROVIDER_REGISTRY``), restricted to the providers that speak
OpenAI's chat-completions wire. Gemini is served through Google's OpenAI-compatible
endpoint (``/v1beta/openai``), not its native API.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Provider:
    """One provider: ``id``, default ``base_url`` ("" = the profile must give one) and the
    environment variables that may hold its key, in Hermes's priority order."""

    id: str
    base_url: str
    key_vars: tuple[str, ...] = ()
    key_required: bool = True


class UnsupportedProviderError(ValueError):
    """The provider exists in Hermes but does not speak OpenAI's wire; ``str()`` says why."""


PROVIDERS: dict[str, Provider] = {
    p.id: p
    for p in (
        Provider("openrouter", "https://openrouter.ai/api/v1", ("OPENROUTER_API_KEY",)),
        Provider("openai-api", "https://api.openai.com/v1", ("OPENAI_API_KEY",)),
        Provider("deepseek", "https://api.deepseek.com/v1", ("DEEPSEEK_API_KEY",)),
        Provider(
            "gemini",
            "https://generativelanguage.googleapis.com/v1beta/openai",
            ("GOOGLE_API_KEY", "GEMINI_API_KEY"),
        ),
        Provider("xai", "https://api.x.ai/v1", ("XAI_API_KEY",)),
        Provider("nvidia", "https://integrate.api.nvidia.com/v1", ("NVIDIA_API_KEY",)),
        Provider("huggingface", "https://router.huggingface.co/v1", ("HF_TOKEN",)),
        Provider("zai", "https://api.z.ai/api/paas/v4", ("GLM_API_KEY", "ZAI_API_KEY", "Z_AI_API_KEY")),
        Provider("kimi-coding", "https://api.moonshot.ai/v1", ("KIMI_API_KEY", "KIMI_CODING_API_KEY")),
        Provider("deepinfra", "https://api.deepinfra.com/v1/openai", ("DEEPINFRA_API_KEY",)),
        Provider("fireworks", "https://api.fireworks.ai/inference/v1", ("FIREWORKS_API_KEY",)),
        # A local or self-hosted OpenAI-compatible server: model.base_url is required,
        # a key is optional (none configured -> no Authorization header).
        Provider("custom", "", (), key_required=False),
    )
}

ALIASES: dict[str, str] = {
    **{alias: "custom" for alias in ("ollama", "local", "vllm", "llamacpp", "llama.cpp", "llama-cpp", "lmstudio")},
    # Hermes's own spellings of the same providers (hermes_cli/auth.py _PROVIDER_ALIASES).
    **dict.fromkeys(("google", "google-gemini", "google-ai-studio"), "gemini"),
    **dict.fromkeys(("x-ai", "x.ai", "grok"), "xai"),
    **dict.fromkeys(("kimi", "moonshot"), "kimi-coding"),
    **dict.fromkeys(("glm", "z-ai", "z.ai", "zhipu"), "zai"),
    "hf": "huggingface",
    "openai": "openai-api",
}

UNSUPPORTED: dict[str, str] = {
    "anthropic": "speaks Anthropic's Messages API, not OpenAI's",
    "minimax": "speaks Anthropic's Messages API, not OpenAI's",
    "minimax-cn": "speaks Anthropic's Messages API, not OpenAI's",
    "bedrock": "needs the AWS SDK, not OpenAI's wire",
    "vertex": "needs Google Cloud credentials, not OpenAI's wire",
    "nous": "signs in with OAuth only",
    "openai-codex": "signs in with OAuth only",
    "xai-oauth": "signs in with OAuth only",
    "qwen-oauth": "signs in with OAuth only",
    "minimax-oauth": "signs in with OAuth only",
    "copilot": "signs in with a GitHub token exchange",
    "copilot-acp": "runs an external process, not an HTTP API",
}


def resolve_provider(provider_id: str | None, base_url: str | None) -> Provider:
    """The provider for a profile's ``model.provider`` and ``model.base_url``.

    ``auto`` or no provider with a ``base_url`` means ``custom`` (Hermes's rule).
    Raises ``UnsupportedProviderError`` for providers that do not speak OpenAI's wire,
    and ``ValueError`` for unknown ids or a ``custom`` provider without a ``base_url``.
    """
    pid = (provider_id or "auto").strip().lower()
    if pid == "auto":
        if not base_url:
            raise ValueError("model.provider is 'auto' (or absent) and model.base_url is not set")
        pid = "custom"
    pid = ALIASES.get(pid, pid)
    if pid in UNSUPPORTED:
        raise UnsupportedProviderError(f"provider '{pid}' {UNSUPPORTED[pid]}")
    provider = PROVIDERS.get(pid)
    if provider is None:
        raise ValueError(f"unknown provider '{pid}'")
    if not provider.base_url and not base_url:
        raise ValueError(f"provider '{pid}' needs model.base_url")
    return provider
