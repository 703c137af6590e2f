"""Reading a Hermes profile directory as-is (DESIGN.md §1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hermes_api.persona import DEFAULT_IDENTITY
from hermes_api.profiles import (
    ProfileError,
    is_profile_name,
    list_profile_names,
    load_profile,
)

from .conftest import HermesHome


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        pytest.param("researcher", True, id="plain"),
        pytest.param("a", True, id="one-char"),
        pytest.param("a" * 64, True, id="64-chars"),
        pytest.param("a" * 65, False, id="65-chars"),
        pytest.param("my_bot-2", True, id="underscore-dash"),
        pytest.param("researcher\n", False, id="trailing-newline"),
        pytest.param("Researcher", False, id="uppercase"),
        pytest.param("-x", False, id="leading-dash"),
        pytest.param("../etc", False, id="traversal"),
        pytest.param("a/b", False, id="slash"),
        pytest.param("", False, id="empty"),
        pytest.param(None, False, id="none"),
    ],
)
def test_profile_name_rule(name: object, valid: bool) -> None:
    assert is_profile_name(name) is valid


def test_listing_skips_invalid_dirs_and_files(home: HermesHome) -> None:
    (home.root / "profiles" / "Bad Name").mkdir()
    (home.root / "profiles" / "notadir").write_text("x")
    assert list_profile_names(home.root) == ["alpha", "beta", "default", "gamma"]


def test_string_model_with_provider_defaults(home: HermesHome) -> None:
    home.add("router", model="anthropic/claude-sonnet-4", env={"OPENROUTER_API_KEY": "sk-or"})
    (home.dir("router") / "config.yaml").write_text(
        "model:\n  default: anthropic/claude-sonnet-4\n  provider: openrouter\n"
    )
    p = load_profile("router", home.root, {})
    assert (p.model, p.provider, p.base_url, p.api_key) == (
        "anthropic/claude-sonnet-4",
        "openrouter",
        "https://openrouter.ai/api/v1",
        "sk-or",
    )
    assert p.chat_completions_url == "https://openrouter.ai/api/v1/chat/completions"


def test_plain_string_model_needs_a_provider(home: HermesHome) -> None:
    home.add("bare", model="gpt-4o")
    with pytest.raises(ProfileError, match="base_url is not set"):
        load_profile("bare", home.root, {})


@pytest.mark.parametrize("key", ["default", "model", "name"])
def test_model_id_aliases(home: HermesHome, key: str) -> None:
    home.add("x", model={key: "m-1", "provider": "ollama", "base_url": "http://127.0.0.1:11434/v1"})
    p = load_profile("x", home.root, {})
    assert (p.model, p.provider, p.api_key) == ("m-1", "custom", None)


def test_dotenv_beats_process_environment(home: HermesHome) -> None:
    home.add("o", model={"default": "gpt-4o", "provider": "openai-api"}, env={"OPENAI_API_KEY": "from-dotenv"})
    assert load_profile("o", home.root, {"OPENAI_API_KEY": "from-env"}).api_key == "from-dotenv"
    home.add("o2", model={"default": "gpt-4o", "provider": "openai-api"}, env={})
    assert load_profile("o2", home.root, {"OPENAI_API_KEY": "from-env"}).api_key == "from-env"


def test_loading_never_writes_process_environment(home: HermesHome) -> None:
    home.add("o", model={"default": "m", "provider": "deepseek"}, env={"DEEPSEEK_API_KEY": "sk-ds-private"})
    before = dict(os.environ)
    load_profile("o", home.root, {})
    assert dict(os.environ) == before
    assert "DEEPSEEK_API_KEY" not in os.environ


def test_provider_key_priority_order(home: HermesHome) -> None:
    home.add(
        "g",
        model={"default": "gemini-2.5-flash", "provider": "gemini"},
        env={"GEMINI_API_KEY": "second", "GOOGLE_API_KEY": "first"},
    )
    p = load_profile("g", home.root, {})
    assert p.api_key == "first"
    assert p.base_url == "https://generativelanguage.googleapis.com/v1beta/openai"


def test_missing_key_is_reported_not_served(home: HermesHome) -> None:
    home.add("nokey", model={"default": "m", "provider": "xai"}, env={})
    with pytest.raises(ProfileError, match="no API key for provider 'xai': set XAI_API_KEY"):
        load_profile("nokey", home.root, {})


def test_key_env_and_literal_api_key(home: HermesHome) -> None:
    home.add(
        "k",
        model={"default": "m", "provider": "custom", "base_url": "http://h/v1", "key_env": "MY_KEY"},
        env={"MY_KEY": "sk-mine"},
    )
    assert load_profile("k", home.root, {}).api_key == "sk-mine"
    home.add("k2", model={"default": "m", "provider": "custom", "base_url": "http://h/v1", "key_env": "UNSET"}, env={})
    with pytest.raises(ProfileError, match="UNSET, which is not set"):
        load_profile("k2", home.root, {})
    home.add("k3", model={"default": "m", "provider": "custom", "base_url": "http://h/v1", "api_key": "sk-lit"})
    assert load_profile("k3", home.root, {}).api_key == "sk-lit"


@pytest.mark.parametrize("provider", ["anthropic", "bedrock", "nous", "openai-codex"])
def test_non_openai_providers_are_unsupported(home: HermesHome, provider: str) -> None:
    home.add("u", model={"default": "m", "provider": provider}, env={"ANTHROPIC_API_KEY": "k"})
    with pytest.raises(ProfileError, match=f"unsupported: provider '{provider}'"):
        load_profile("u", home.root, {})


def test_unknown_provider(home: HermesHome) -> None:
    home.add("u", model={"default": "m", "provider": "acme-ai"})
    with pytest.raises(ProfileError, match="unknown provider 'acme-ai'"):
        load_profile("u", home.root, {})


def test_auto_provider_with_base_url_is_custom(home: HermesHome) -> None:
    home.add("a", model={"default": "m", "provider": "auto", "base_url": "http://127.0.0.1:8080/v1/"})
    p = load_profile("a", home.root, {})
    assert (p.provider, p.base_url, p.api_key) == ("custom", "http://127.0.0.1:8080/v1", None)


def test_env_references_in_config_expand_from_dotenv_then_environment(home: HermesHome) -> None:
    home.add(
        "e",
        model={"default": "m", "provider": "custom", "base_url": "${BASE}", "api_key": "${env:TOKEN}"},
        env={"TOKEN": "sk-from-dotenv"},
    )
    p = load_profile("e", home.root, {"BASE": "http://10.0.0.5:8000/v1", "TOKEN": "sk-env"})
    assert (p.base_url, p.api_key) == ("http://10.0.0.5:8000/v1", "sk-from-dotenv")
    with pytest.raises(ProfileError, match=r"refers to \$\{BASE\}, which is not set"):
        load_profile("e", home.root, {})


def test_invalid_yaml_never_echoes_the_file(home: HermesHome) -> None:
    d = home.add("broken")
    (d / "config.yaml").write_text("model:\n  api_key: sk-super-secret-123\n  default: [unclosed\n")
    with pytest.raises(ProfileError) as info:
        load_profile("broken", home.root, {})
    assert "sk-super-secret" not in str(info.value)
    assert "config.yaml is not valid YAML (line" in str(info.value)


def test_persona_reads_soul_memory_and_user(home: HermesHome) -> None:
    home.add("p", soul="I am P.", memory=["fact one", "fact two"], user=["likes cats"])
    persona = load_profile("p", home.root, {}).persona
    assert persona.startswith("I am P.\n\n")
    assert "fact one\n§\nfact two" in persona and persona.endswith("likes cats")


def test_memory_switches_and_limits(home: HermesHome) -> None:
    home.add(
        "p", soul="S", memory=["m"], user=["u"], config={"memory": {"memory_enabled": False, "user_char_limit": 100}}
    )
    persona = load_profile("p", home.root, {}).persona
    assert "MEMORY (your personal notes)" not in persona
    assert "[1% — 1/100 chars]" in persona


def test_missing_soul_uses_default_identity(home: HermesHome) -> None:
    d = home.add("p")
    (d / "SOUL.md").unlink()
    assert load_profile("p", home.root, {}).persona == DEFAULT_IDENTITY


def test_bad_max_tokens_and_no_model(home: HermesHome) -> None:
    home.add("m", model={"default": "x", "provider": "custom", "base_url": "http://h/v1", "max_tokens": "lots"})
    with pytest.raises(ProfileError, match="max_tokens must be a positive integer"):
        load_profile("m", home.root, {})
    d = home.add("n")
    (d / "config.yaml").write_text("memory: {}\n")
    with pytest.raises(ProfileError, match="config.yaml has no model"):
        load_profile("n", home.root, {})


def test_profile_yaml_description_and_broken_metadata(home: HermesHome) -> None:
    d = home.add("d")
    (d / "profile.yaml").write_text('description: "Helps with taxes."\n')
    assert load_profile("d", home.root, {}).description == "Helps with taxes."
    (d / "profile.yaml").write_text("description: [broken\n")
    assert load_profile("d", home.root, {}).description == ""


def test_example_home_loads(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "profiles.example"
    env = {"HERMES_EXAMPLE_BASE_URL": "http://127.0.0.1:9/v1"}
    loaded = {n: load_profile(n, example, env) for n in list_profile_names(example)}
    assert set(loaded) == {"default", "researcher", "coder", "family"}
    personas = {p.persona for p in loaded.values()}
    assert len(personas) == 4
    assert len({p.api_key for p in loaded.values()}) == 4
    assert "USER PROFILE" not in loaded["coder"].persona  # user_profile_enabled: false


def test_dotenv_values_are_interpolated(home: HermesHome) -> None:
    home.add(
        "i", model={"default": "m", "provider": "openai-api"}, env={"PREFIX": "sk", "OPENAI_API_KEY": "${PREFIX}-9"}
    )
    assert load_profile("i", home.root, {}).api_key == "sk-9"
