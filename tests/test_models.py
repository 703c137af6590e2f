"""GET /v1/models and /v1/models/{model}: what each key may use, and nothing more."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from .conftest import digest

KEYS = [
    {"name": "webui", "key_sha256": digest("key-webui"), "profiles": ["alpha", "beta"]},
    {"name": "admin", "key_sha256": digest("key-admin"), "profiles": "*"},
]


@pytest.fixture
def keyed(make_app):
    with TestClient(make_app(keys=KEYS), raise_server_exceptions=False) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_open_server_lists_every_exposed_profile_sorted(client) -> None:
    r = client.get("/v1/models")
    body = r.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["alpha", "beta", "default", "gamma"]
    model = body["data"][0]
    assert set(model) == {"id", "object", "created", "owned_by"}
    assert (model["object"], model["owned_by"]) == ("model", "hermes") and model["created"] > 1_600_000_000


def test_not_exposed_profiles_are_not_listed(make_app, home) -> None:
    home.add("secret")
    with TestClient(make_app(expose=["default", "alpha"])) as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["alpha", "default"]


def test_unservable_profiles_are_not_listed(make_app, home) -> None:
    home.add("beta", model={"default": "m", "provider": "anthropic"})
    with TestClient(make_app()) as c:
        assert "beta" not in [m["id"] for m in c.get("/v1/models").json()["data"]]


def test_list_is_filtered_by_the_callers_key(keyed) -> None:
    assert [m["id"] for m in keyed.get("/v1/models", headers=auth("key-webui")).json()["data"]] == ["alpha", "beta"]
    assert len(keyed.get("/v1/models", headers=auth("key-admin")).json()["data"]) == 4


def test_retrieve(keyed) -> None:
    r = keyed.get("/v1/models/alpha", headers=auth("key-webui"))
    assert r.status_code == 200 and r.json()["id"] == "alpha" and r.headers["x-hermes-profile"] == "alpha"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        pytest.param("/v1/models/gamma", 403, "model_not_found", id="exposed-not-allowed"),
        pytest.param("/v1/models/nope", 404, "model_not_found", id="unknown"),
        pytest.param("/v1/models/..%2F..%2Fetc", 404, "model_not_found", id="traversal"),
        pytest.param("/p/gamma/v1/models", 403, "model_not_found", id="prefix-not-allowed"),
        pytest.param("/p/nope/v1/models", 404, "model_not_found", id="prefix-unknown"),
        pytest.param("/p/alpha/v1/models/beta", 400, "profile_conflict", id="prefix-conflict"),
    ],
)
def test_retrieve_errors(keyed, path: str, status: int, code: str) -> None:
    r = keyed.get(path, headers=auth("key-webui"))
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_prefix_lists_only_its_profile(keyed) -> None:
    r = keyed.get("/p/beta/v1/models", headers=auth("key-webui"))
    assert [m["id"] for m in r.json()["data"]] == ["beta"]


def test_403_message_does_not_reveal_the_allowlist(keyed) -> None:
    message = keyed.get("/v1/models/gamma", headers=auth("key-webui")).json()["error"]["message"]
    assert "alpha" not in message and "beta" not in message
