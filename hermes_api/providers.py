"""Hermes provider ids -> OpenAI-compatible base URL and the variables holding the key.

The ids, base URLs and key variables are Hermes's own (hermes-agent 0.19.0
``hermes_cli/auth.py``, ``PROVIDER_REGISTRY``), restricted in ``PROVIDERS`` to the
providers that speak OpenAI's chat-completions wire. Gemini is served through Google's
OpenAI-compatible endpoint (``/v1beta/openai``), not its native API. ``HERMES_PROVIDERS``
is Hermes's whole registry in its order, which decides the provider ``auto`` picks.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


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


# hermes-agent 0.19.0 PROVIDER_REGISTRY in registry order (built-ins, then the providers of
# plugins/model-providers/), with each API-key provider's key variables in priority order;
# OAuth, AWS and external-process providers have none. `provider: auto` picks the first
# whose key is set, skipping copilot and lmstudio (auth.py resolve_provider).
HERMES_PROVIDERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nous", ()),
    ("openai-codex", ()),
    ("openai-api", ("OPENAI_API_KEY",)),
    ("xai-oauth", ()),
    ("qwen-oauth", ()),
    ("lmstudio", ("LM_API_KEY",)),
    ("copilot", ("COPILOT_GITHUB_TOKEN", "GH_TOKEN", "GITHUB_TOKEN")),
    ("copilot-acp", ()),
    ("gemini", ("GOOGLE_API_KEY", "GEMINI_API_KEY")),
    ("zai", ("GLM_API_KEY", "ZAI_API_KEY", "Z_AI_API_KEY")),
    ("kimi-coding", ("KIMI_API_KEY", "KIMI_CODING_API_KEY")),
    ("kimi-coding-cn", ("KIMI_CN_API_KEY",)),
    ("stepfun", ("STEPFUN_API_KEY",)),
    ("arcee", ("ARCEEAI_API_KEY",)),
    ("gmi", ("GMI_API_KEY",)),
    ("minimax", ("MINIMAX_API_KEY",)),
    ("minimax-oauth", ()),
    ("anthropic", ("ANTHROPIC_API_KEY", "ANTHROPIC_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")),
    ("alibaba", ("DASHSCOPE_API_KEY",)),
    ("alibaba-coding-plan", ("ALIBABA_CODING_PLAN_API_KEY", "DASHSCOPE_API_KEY")),
    ("minimax-cn", ("MINIMAX_CN_API_KEY",)),
    ("deepseek", ("DEEPSEEK_API_KEY",)),
    ("xai", ("XAI_API_KEY",)),
    ("nvidia", ("NVIDIA_API_KEY",)),
    ("opencode-zen", ("OPENCODE_ZEN_API_KEY",)),
    ("opencode-go", ("OPENCODE_GO_API_KEY",)),
    ("kilocode", ("KILOCODE_API_KEY",)),
    ("huggingface", ("HF_TOKEN",)),
    ("xiaomi", ("XIAOMI_API_KEY",)),
    ("tencent-tokenhub", ("TOKENHUB_API_KEY",)),
    ("ollama-cloud", ("OLLAMA_API_KEY",)),
    ("bedrock", ()),
    ("azure-foundry", ("AZURE_FOUNDRY_API_KEY",)),
    ("deepinfra", ("DEEPINFRA_API_KEY",)),
    ("deep-infra", ("DEEPINFRA_API_KEY",)),
    ("deepinfra-ai", ("DEEPINFRA_API_KEY",)),
    ("fireworks", ("FIREWORKS_API_KEY",)),
    ("fireworks-ai", ("FIREWORKS_API_KEY",)),
    ("fw", ("FIREWORKS_API_KEY",)),
    ("novita", ("NOVITA_API_KEY",)),
    ("novita-ai", ("NOVITA_API_KEY",)),
    ("novitaai", ("NOVITA_API_KEY",)),
    ("upstage", ("UPSTAGE_API_KEY",)),
    ("solar", ("UPSTAGE_API_KEY",)),
)
# Hermes's own provider ids: a bare `model.provider` equal to one of these never names a
# custom endpoint (runtime_provider.py _get_named_custom_provider). Vertex and the
# mixture-of-agents provider are resolved before custom endpoints are looked at.
HERMES_PROVIDER_IDS = frozenset(
    {pid for pid, _ in HERMES_PROVIDERS}
    | {"openrouter", "moa", "vertex", "google-vertex", "vertex-ai", "gcp-vertex", "vertexai"}
)
# Under `provider: auto` either of these means OpenRouter (auth.py resolve_provider).
AUTO_OPENROUTER_VARS = ("OPENAI_API_KEY", "OPENROUTER_API_KEY")
# The inference keys a profile's .env may hold (GitHub tokens are kept for tools too).
PROVIDER_KEY_VARS: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["OPENROUTER_API_KEY", "OPENAI_API_KEY"]
        + [var for pid, key_vars in HERMES_PROVIDERS if pid != "copilot" for var in key_vars]
    )
)

# Values Hermes does not count as a key (auth.py has_usable_secret).
_PLACEHOLDERS = frozenset(
    {"*", "**", "***", "changeme", "your_api_key", "your_api_key_here", "your-api-key", "placeholder"}
    | {"example", "dummy", "null", "none"}
)


def usable_secret(value: object) -> bool:
    """True for a string of at least 4 characters once stripped that is not a placeholder
    such as ``changeme`` (hermes-agent ``hermes_cli/auth.py`` ``has_usable_secret``)."""
    if not isinstance(value, str):
        return False
    cleaned = value.strip()
    return len(cleaned) >= 4 and cleaned.lower() not in _PLACEHOLDERS


def hostname(url: str) -> str:
    """The lowercased host of ``url`` ("" if none), as ``utils.py`` ``base_url_hostname``."""
    raw = url.strip()
    return (urlsplit(raw if "://" in raw else f"//{raw}").hostname or "").lower().rstrip(".")


def host_matches(url: str, domain: str) -> bool:
    """True when ``url``'s host is ``domain`` or a subdomain of it: never a substring test,
    so ``api.openai.com.example`` is not OpenAI (``utils.py`` ``base_url_host_matches``)."""
    host = hostname(url)
    return bool(host) and (host == domain or host.endswith("." + domain))


def host_key_vars(base_url: str) -> tuple[str, ...]:
    """The variables whose key Hermes sends to ``base_url`` when no key is configured:
    the key of the provider owning the host (``OLLAMA_API_KEY`` for ollama.com,
    ``OPENAI_API_KEY`` for openai.com and openai.azure.com, ``OPENROUTER_API_KEY`` for
    openrouter.ai), then ``<VENDOR>_API_KEY`` from the host's registrable label
    (``api.groq.com`` -> ``GROQ_API_KEY``; none for IP addresses and localhost).
    ``runtime_provider.py`` ``_resolve_openrouter_runtime`` and ``_host_derived_api_key``;
    unlike Hermes, OpenRouter's host never gets ``OPENAI_API_KEY``."""
    names = [
        name
        for name, domains in (
            ("OLLAMA_API_KEY", ("ollama.com",)),
            ("OPENAI_API_KEY", ("openai.com", "openai.azure.com")),
            ("OPENROUTER_API_KEY", ("openrouter.ai",)),
        )
        if any(host_matches(base_url, d) for d in domains)
    ]
    derived = _host_derived_key_var(hostname(base_url))
    return tuple(names + ([derived] if derived else []))


def _host_derived_key_var(host: str) -> str | None:
    labels = [label for label in host.split(".") if label]
    if not labels or any(c.isdigit() for c in labels[-1]) or host == "localhost" or ":" in host:
        return None
    while labels and labels[0] in ("api", "www"):
        labels.pop(0)
    if len(labels) < 2:
        return None
    vendor = "".join(c if c.isalnum() else "_" for c in labels[-2]).upper()
    if not vendor or not vendor[0].isalpha() or vendor in ("OPENAI", "OPENROUTER", "OLLAMA"):
        return None
    return f"{vendor}_API_KEY"
