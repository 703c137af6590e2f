"""Choosing the profile for a request (docs/contract.md §3) and picking up changed profiles."""

from __future__ import annotations

import asyncio
import builtins
import os
import shutil
import time
from collections.abc import Callable

import orjson
import pytest
from starlette.testclient import TestClient

from hermes_api import registry as registry_module
from hermes_api.errors import (
    InvalidHeaderError,
    InvalidValueError,
    ModelNotFoundError,
    PermissionDeniedError,
    ProfileConflictError,
)
from hermes_api.headers import IDENTITY_HEADERS, ROUTING_HEADERS
from hermes_api.keys import Caller
from hermes_api.registry import ProfileRegistry
from hermes_api.settings import IDENTITY_FIELDS, ROUTE_FIELDS, APIKey, Settings

from .conftest import HermesHome, completion

OPEN = Caller(None)


@pytest.fixture
def registry(make_settings: Callable[..., Settings]) -> Callable[..., ProfileRegistry]:
    def make(**raw) -> ProfileRegistry:
        reg = ProfileRegistry(make_settings(**raw), {})
        reg.load()
        return reg

    return make


def resolve(reg: ProfileRegistry, headers=None, prefix=None, model=None, caller=OPEN) -> str:
    return reg.resolve(reg.select(headers or {}, prefix=prefix, model=model), caller).name


ROUTES = [
    {"chat_id": "room-1", "profile": "alpha"},
    {"user_id": "u1", "profile": "beta"},
    {"user_id": "u1", "thread_id": "t9", "profile": "gamma"},
    {"thread_id": "t9", "profile": "alpha"},
]


@pytest.mark.parametrize(
    ("headers", "prefix", "model", "expected"),
    [
        pytest.param({}, None, None, "default", id="nothing-default"),
        pytest.param({}, None, "alpha", "alpha", id="model"),
        pytest.param({}, None, "", "default", id="empty-model-default"),
        pytest.param({}, None, "hermes-agent", "default", id="alias-means-default"),
        pytest.param({"x-hermes-profile": "beta"}, None, None, "beta", id="header"),
        pytest.param({}, "gamma", None, "gamma", id="prefix"),
        pytest.param({}, "gamma", "gamma", "gamma", id="prefix-and-model-agree"),
        pytest.param({"x-hermes-profile": "beta"}, None, "hermes-agent", "beta", id="header-with-alias"),
        pytest.param({"x-hermes-chat-id": "room-1"}, None, None, "alpha", id="route-chat"),
        pytest.param({"x-hermes-user-id": "u1"}, None, None, "beta", id="route-user"),
        pytest.param(
            {"x-hermes-user-id": "u1", "x-hermes-thread-id": "t9"}, None, None, "gamma", id="most-specific-route-wins"
        ),
        pytest.param({"x-hermes-thread-id": "t9"}, None, None, "alpha", id="route-thread"),
        pytest.param(
            {"x-hermes-chat-id": "room-1", "x-hermes-user-id": "u1"}, None, None, "alpha", id="tie-file-order"
        ),
        pytest.param({"x-hermes-chat-id": "room-1"}, None, "beta", "beta", id="explicit-beats-route"),
        pytest.param({"x-hermes-chat-id": "unknown-room"}, None, None, "default", id="no-route-match"),
    ],
)
def test_resolution_rules(registry, headers, prefix, model, expected) -> None:
    assert resolve(registry(routes=ROUTES), headers, prefix, model) == expected


@pytest.mark.parametrize(
    ("headers", "prefix", "model"),
    [
        pytest.param({}, "alpha", "beta", id="prefix-vs-model"),
        pytest.param({"x-hermes-profile": "alpha"}, None, "beta", id="header-vs-model"),
        pytest.param({"x-hermes-profile": "alpha"}, "beta", None, id="header-vs-prefix"),
        pytest.param({}, "alpha", "gpt-4o", id="prefix-vs-foreign-model"),
    ],
)
def test_conflicting_selectors(registry, headers, prefix, model) -> None:
    with pytest.raises(ProfileConflictError) as info:
        resolve(registry(), headers, prefix, model)
    assert (info.value.status_code, info.value.param, info.value.code) == (400, "model", "profile_conflict")


def test_unknown_and_not_exposed_look_identical(registry, home: HermesHome) -> None:
    home.add("hidden")
    reg = registry(expose=["default", "alpha"])
    errors = []
    for name in ("hidden", "nonexistent"):
        with pytest.raises(ModelNotFoundError) as info:
            resolve(reg, model=name)
        errors.append(info.value.to_dict()["error"] | {"message": info.value.message.replace(name, "X")})
    assert errors[0] == errors[1]
    assert errors[0]["code"] == "model_not_found" and errors[0]["param"] == "model"


@pytest.mark.parametrize("name", ["../alpha", "alpha\n", "ALPHA", "alpha/../beta", "%2e%2e", "a" * 300])
def test_malformed_names_are_not_found(registry, name: str) -> None:
    with pytest.raises(ModelNotFoundError):
        resolve(registry(), model=name)


def test_key_allowlist_gives_403_without_naming_the_list(registry) -> None:
    reg = registry()
    caller = Caller(APIKey("k", b"x" * 32, frozenset({"alpha", "beta"})))
    assert resolve(reg, model="alpha", caller=caller) == "alpha"
    with pytest.raises(PermissionDeniedError) as info:
        resolve(reg, model="gamma", caller=caller)
    assert info.value.status_code == 403 and "beta" not in info.value.message
    with pytest.raises(ModelNotFoundError):  # unknown stays 404 even for a restricted key
        resolve(reg, model="zeta", caller=caller)


def test_no_default_means_selection_required(registry) -> None:
    with pytest.raises(InvalidValueError) as info:
        resolve(registry(default_profile=None), {})
    assert info.value.param == "model"


def test_model_must_be_a_string(registry) -> None:
    with pytest.raises(InvalidValueError, match="'model' must be a string"):
        resolve(registry(), model=["alpha"])


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param("x-hermes-profile", "a" * 257, id="too-long"),
        pytest.param("x-hermes-chat-id", "room\x01", id="control-char"),
        pytest.param("x-hermes-user-id", "\x7f", id="delete"),
        pytest.param("x-hermes-thread-id", "\x9b", id="c1-control"),
        pytest.param("x-hermes-user-id", "\xff\xfe", id="not-utf8"),
    ],
)
def test_bad_routing_headers_name_the_header(registry, header: str, value: str) -> None:
    with pytest.raises(InvalidHeaderError) as info:
        resolve(registry(), {header: value})
    assert info.value.param == header and info.value.status_code == 400


def test_utf8_header_values_route(registry) -> None:
    value = "José".encode().decode("latin-1")  # how Starlette hands over the raw bytes
    reg = registry(routes=[{"user_id": "José", "profile": "beta"}])
    assert resolve(reg, {"x-hermes-user-id": value}) == "beta"
    assert resolve(reg, {"x-hermes-user-id": "a" * 256}) == "default"


def test_edited_soul_is_picked_up_by_the_next_check(registry, home: HermesHome) -> None:
    reg = registry()
    assert reg.get("alpha").persona == "You are ALPHA-PERSONA."
    (home.dir("alpha") / "SOUL.md").write_text("You are the NEW alpha.")
    assert reg.get("alpha").persona == "You are ALPHA-PERSONA."  # requests never stat
    reg.check_files()
    assert reg.get("alpha").persona == "You are the NEW alpha."


def test_unchanged_profile_is_not_reloaded(registry) -> None:
    reg = registry()
    first = reg.get("beta")
    reg.check_files()
    assert reg.get("beta") is first


def test_requests_never_touch_the_file_system(registry, monkeypatch) -> None:
    reg = registry()
    reg.get("alpha")  # the persona is read on first use
    calls = []
    monkeypatch.setattr(os, "stat", lambda *a, **k: calls.append(a))
    for _ in range(1000):
        assert resolve(reg, model="alpha") == "alpha"
    assert calls == []


def test_used_profiles_are_checked_first(registry, home: HermesHome, monkeypatch) -> None:
    """At any number of profiles a used one is re-checked by the next tick, though the
    round-robin slice (here 1 profile a tick) would reach it only later."""
    monkeypatch.setattr(registry_module, "SWEEP_SLICE", 1)
    reg = registry()  # round-robin order: alpha, beta, default, gamma
    reg.get("beta"), reg.get("gamma")
    reg.check_files(), reg.check_files()  # alpha, then beta; the uses are cleared
    (home.dir("gamma") / "SOUL.md").write_text("gamma, edited")
    (home.dir("beta") / "SOUL.md").write_text("beta, edited")
    reg.get("gamma")
    reg.check_files()  # gamma (used), then default (its round-robin turn)
    assert reg.get("gamma").persona == "gamma, edited"
    assert reg.get("beta").persona == "You are BETA-PERSONA."  # not used: waits its turn
    for _ in range(3):  # gamma, alpha, beta
        reg.check_files()
    assert reg.get("beta").persona == "beta, edited"


def test_new_profile_appears_with_expose_star(registry, home: HermesHome) -> None:
    reg = registry(expose="*")
    assert reg.get("delta") is None
    home.add("delta")
    os.utime(home.root / "profiles", ns=(1, 1))  # a distinct directory mtime, however fast
    assert reg.get("delta") is None  # requests never look at the listing
    reg.check_files()
    assert reg.get("delta").name == "delta"
    assert [p.name for p in reg.models()] == ["alpha", "beta", "default", "delta", "gamma"]
    shutil.rmtree(home.dir("delta"))
    os.utime(home.root / "profiles", ns=(2, 2))
    reg.check_files()
    assert reg.get("delta") is None and "delta" not in [p.name for p in reg.models()]


def test_broken_then_fixed_profile(registry, home: HermesHome) -> None:
    (home.dir("beta") / "config.yaml").write_text("model: [\n")
    reg = registry()
    assert reg.get("beta") is None and "beta" not in [p.name for p in reg.models()]
    home.add("beta")
    reg.check_files()
    assert reg.get("beta") is not None and "beta" in [p.name for p in reg.models()]


def test_background_sweep_refreshes_unused_profiles(make_settings, home: HermesHome) -> None:
    async def scenario() -> str:
        reg = ProfileRegistry(make_settings(reload_interval=0.05), {})
        reg.load()
        (home.dir("gamma") / "SOUL.md").write_text("swept")
        task = asyncio.create_task(reg.sweep())
        deadline = time.monotonic() + 10
        while reg.get("gamma").persona != "swept" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        return reg.get("gamma").persona

    assert asyncio.run(scenario()) == "swept"


def test_survey_lists_found_and_exposed(registry, home: HermesHome) -> None:
    home.add("extra")
    home.add("broken", model={"default": "m", "provider": "anthropic"})
    reg = registry(expose=["default", "alpha", "broken", "ghost"])
    rows = {s.name: s for s in reg.survey()}
    assert rows["extra"].exposed is False and rows["extra"].reason == "not in expose"
    assert rows["broken"].profile is None and "unsupported" in rows["broken"].reason
    assert rows["ghost"].profile is None and "is not a directory" in rows["ghost"].reason
    assert rows["alpha"].profile is not None and rows["alpha"].reason is None


TRUSTED = Caller(APIKey("webui", b"t" * 32, None, trusted_identity=True))
UNTRUSTED = Caller(APIKey("plain", b"u" * 32, None))
IDENTITY_ROUTES = [
    {"openwebui_user_email": "alice@example.com", "profile": "alpha"},
    {"openwebui_user_id": "u-bob", "profile": "beta"},
    {"openwebui_user_id": "u-bob", "openwebui_chat_id": "chat-7", "profile": "gamma"},
    {"librechat_user_id": "65f0c0ffee", "profile": "beta"},
    {"librechat_user_email": "carol@example.com", "librechat_conversation_id": "conv-1", "profile": "gamma"},
    {"user_id": "u-bob", "profile": "alpha"},
]


@pytest.fixture
def identity_registry(registry) -> ProfileRegistry:
    keys = [{"name": "webui", "key_sha256": "c" * 64, "trusted_identity": True}]
    return registry(routes=IDENTITY_ROUTES, keys=keys)


def identity_resolve(reg: ProfileRegistry, headers: dict, caller: Caller, model: str | None = None) -> str:
    return reg.resolve(reg.select(headers, model=model, identity=caller.trusted_identity), caller).name


@pytest.mark.parametrize(
    ("headers", "model", "caller", "expected"),
    [
        pytest.param({"x-openwebui-user-email": "alice@example.com"}, None, TRUSTED, "alpha", id="owui-email"),
        pytest.param({"x-openwebui-user-id": "u-bob"}, None, TRUSTED, "beta", id="owui-user-id"),
        pytest.param(
            {"x-openwebui-user-id": "u-bob", "x-openwebui-chat-id": "chat-7"},
            None,
            TRUSTED,
            "gamma",
            id="most-specific",
        ),
        pytest.param({"x-librechat-user-id": "65f0c0ffee"}, None, TRUSTED, "beta", id="librechat-user-id"),
        pytest.param(
            {"x-librechat-user-email": "carol@example.com", "x-librechat-conversation-id": "conv-1"},
            None,
            TRUSTED,
            "gamma",
            id="librechat-email-and-conversation",
        ),
        pytest.param(
            {"x-librechat-user-email": "carol@example.com"}, None, TRUSTED, "default", id="partial-match-is-no-match"
        ),
        pytest.param(
            {"x-openwebui-user-email": "alice@example.com"}, "beta", TRUSTED, "beta", id="explicit-model-wins"
        ),
        pytest.param(
            {"x-openwebui-user-email": "alice@example.com"}, "hermes-agent", TRUSTED, "alpha", id="alias-routes"
        ),
        pytest.param({"x-openwebui-user-email": "ALICE@example.com"}, None, TRUSTED, "default", id="exact-match-only"),
        pytest.param({"x-openwebui-user-email": ""}, None, TRUSTED, "default", id="empty-is-absent"),
        pytest.param(
            {"x-openwebui-user-email": "alice@example.com"}, None, UNTRUSTED, "default", id="untrusted-ignored"
        ),
        pytest.param({"x-openwebui-user-email": "alice@example.com"}, None, OPEN, "default", id="open-server-ignored"),
        pytest.param({"x-hermes-user-id": "u-bob"}, None, UNTRUSTED, "alpha", id="hermes-headers-for-everyone"),
    ],
)
def test_identity_routing(identity_registry, headers, model, caller, expected) -> None:
    assert identity_resolve(identity_registry, headers, caller, model) == expected


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param("x-librechat-user-id", "{{LIBRECHAT_USER_ID}}", id="librechat-placeholder"),
        pytest.param("x-librechat-conversation-id", "c-{{LIBRECHAT_BODY_CONVERSATIONID}}", id="embedded-placeholder"),
        pytest.param("x-openwebui-user-email", "{{user.email}}", id="other-template"),
        pytest.param("x-openwebui-user-email", "josé@example.com".encode().decode("latin-1"), id="non-ascii"),
        pytest.param("x-openwebui-user-id", "\xff", id="not-utf8"),
        pytest.param("x-openwebui-chat-id", "c" * 257, id="too-long"),
        pytest.param("x-librechat-user-email", "a\x00b", id="control-char"),
    ],
)
def test_bad_identity_headers_name_the_header(identity_registry, header: str, value: str) -> None:
    with pytest.raises(InvalidHeaderError) as info:
        identity_resolve(identity_registry, {header: value}, TRUSTED)
    assert (info.value.status_code, info.value.code, info.value.param) == (400, "invalid_header", header)
    assert header in info.value.message
    # The same header from a key without trusted_identity is not read at all.
    assert identity_resolve(identity_registry, {header: value}, UNTRUSTED) == "default"


UNEXPANDED = {"x-librechat-user-id": "{{LIBRECHAT_USER_ID}}", "x-openwebui-user-email": "zoë@example.com"}


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        pytest.param({"model": "beta"}, "beta", id="model"),
        pytest.param({"headers": {"x-hermes-profile": "gamma"}}, "gamma", id="x-hermes-profile"),
        pytest.param({"prefix": "alpha"}, "alpha", id="path-prefix"),
    ],
)
def test_identity_headers_are_not_read_when_the_request_names_its_profile(
    identity_registry, selectors: dict, expected: str
) -> None:
    """LibreChat's agents send the endpoint's header templates unexpanded; a request
    that names its profile reads no route, so they are ignored, not a 400."""
    headers = {**UNEXPANDED, **selectors.pop("headers", {})}
    selection = identity_registry.select(headers, identity=True, **selectors)
    assert identity_registry.resolve(selection, TRUSTED).name == expected


def test_identity_headers_no_route_matches_on_are_not_read(registry) -> None:
    keys = [{"name": "webui", "key_sha256": "c" * 64, "trusted_identity": True}]
    reg = registry(routes=[{"openwebui_user_email": "alice@example.com", "profile": "alpha"}], keys=keys)
    headers = {"x-librechat-user-id": "{{LIBRECHAT_USER_ID}}", "x-openwebui-chat-id": "\xff"}
    assert identity_resolve(reg, {**headers, "x-openwebui-user-email": "alice@example.com"}, TRUSTED) == "alpha"
    with pytest.raises(InvalidHeaderError) as info:  # the one a route reads is still checked
        identity_resolve(reg, {**headers, "x-openwebui-user-email": "{{user.email}}"}, TRUSTED)
    assert info.value.param == "x-openwebui-user-email"


def test_identity_route_to_a_forbidden_profile_is_403(registry) -> None:
    keys = [{"name": "webui", "key_sha256": "c" * 64, "trusted_identity": True, "profiles": ["beta"]}]
    reg = registry(routes=IDENTITY_ROUTES, keys=keys)
    caller = Caller(reg.settings.keys[0])
    assert identity_resolve(reg, {"x-openwebui-user-id": "u-bob"}, caller) == "beta"
    with pytest.raises(PermissionDeniedError):
        identity_resolve(reg, {"x-openwebui-user-email": "alice@example.com"}, caller)


def test_every_identity_field_has_a_header() -> None:
    assert tuple(IDENTITY_HEADERS) == IDENTITY_FIELDS
    assert set(ROUTING_HEADERS) | set(IDENTITY_HEADERS) == set(ROUTE_FIELDS)


def test_unreadable_persona_is_not_served_and_is_reported(registry, home: HermesHome) -> None:
    soul = home.dir("beta") / "SOUL.md"
    soul.unlink()
    soul.mkdir()  # read on first use (profiles.Profile.persona): opening it fails
    reg = registry()
    assert reg.get("alpha").persona == "You are ALPHA-PERSONA."
    assert reg.get("beta") is None and "beta" not in [p.name for p in reg.models()]
    rows = {s.name: s for s in registry().survey()}
    assert rows["beta"].profile is None and rows["beta"].reason == "cannot read SOUL.md: Is a directory"


def test_starlette_headers_route_with_the_first_value_of_a_repeated_header(registry) -> None:
    from starlette.datastructures import Headers

    raw = [(b"content-type", b"application/json"), (b"x-hermes-profile", b"beta"), (b"x-hermes-profile", b"gamma")]
    reg = registry()
    assert reg.resolve(reg.select(Headers(raw=raw)), OPEN).name == "beta"


def test_no_profile_file_is_read_on_the_event_loop(make_app, upstream, home: HermesHome, monkeypatch) -> None:
    """The event loop serves every request, so a slow disk (a Hermes home on a network
    file system) must never stall it: the sweep's checks and reloads, a new profile's
    load and a profile's first persona read all run in worker threads. Edits and a new
    profile are still picked up."""
    root = os.fspath(home.root)
    on_loop: list[str] = []

    def spy(real):
        def wrapper(path, *args, **kwargs):
            if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(root):
                try:
                    asyncio.get_running_loop()
                except RuntimeError:
                    pass  # a worker thread (or the test itself)
                else:
                    on_loop.append(f"{real.__name__} {os.fspath(path)[len(root) :]}")
            return real(path, *args, **kwargs)

        return wrapper

    route = upstream.post("/chat/completions").respond(json=completion())

    def persona_sent(model: str) -> str:
        r = client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        return orjson.loads(route.calls.last.request.content)["messages"][0]["content"]

    with TestClient(make_app(expose="*", reload_interval=0.02)) as client:  # startup has loaded the profiles
        for module, name in ((os, "stat"), (os, "scandir"), (builtins, "open")):
            monkeypatch.setattr(module, name, spy(getattr(module, name)))
        assert persona_sent("alpha") == "You are ALPHA-PERSONA."  # its first read
        (home.dir("alpha") / "SOUL.md").write_text("alpha, edited")
        home.add("delta")
        deadline = time.monotonic() + 10
        while persona_sent("alpha") != "alpha, edited" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert persona_sent("alpha") == "alpha, edited"
        while client.get("/v1/models/delta").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert persona_sent("delta") == "You are DELTA-PERSONA."
        assert client.get("/v1/models").status_code == 200
        monkeypatch.undo()
    assert on_loop == []
