"""openapi/openapi.yaml describes every route, and only those (the docs are tested)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from starlette.routing import Mount, Route

from hermes_api.app import ByMethod
from hermes_api.binding import ProfileEndpoint
from hermes_api.delegation import DEPTH_HEADER
from hermes_api.endpoints.chat import SESSION_HEADER
from hermes_api.headers import IDENTITY_HEADERS, ROUTING_HEADERS

SPEC = yaml.safe_load((Path(__file__).resolve().parent.parent / "openapi" / "openapi.yaml").read_text())


def app_operations(app) -> dict[tuple[str, str], str]:
    """(METHOD, path) -> handler name for every route of the app, mounts flattened."""
    found: dict[tuple[str, str], str] = {}

    def walk(routes, prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                walk(route.routes, prefix + route.path)
            elif isinstance(route, Route):
                endpoints = route.endpoint.endpoints if isinstance(route.endpoint, ByMethod) else {}
                path = (prefix + route.path).replace(":path}", "}")
                for method in route.methods - {"HEAD"}:
                    endpoint = endpoints.get(method, route.endpoint)
                    handler = endpoint.handler if isinstance(endpoint, ProfileEndpoint) else endpoint
                    found[(method, path)] = handler.__name__

    walk(app.routes, "")
    return found


def spec_operations() -> dict[tuple[str, str], str]:
    return {
        (method.upper(), path): operation["operationId"]
        for path, item in SPEC["paths"].items()
        for method, operation in item.items()
    }


def test_routes_and_spec_are_equal(make_app) -> None:
    assert app_operations(make_app()) == spec_operations()


def test_every_operation_documents_its_errors() -> None:
    for (method, path), _ in spec_operations().items():
        responses = SPEC["paths"][path][method.lower()]["responses"]
        assert "200" in responses
        assert "431" in responses, path  # the header-size cap applies to every route
        if SPEC["paths"][path][method.lower()].get("security") != []:  # not /health, /ready
            assert "401" in responses, path


@pytest.mark.parametrize("name", sorted(SPEC["components"]["schemas"]))
def test_every_schema_is_used(name: str) -> None:
    text = yaml.safe_dump(SPEC)
    assert text.count(f"#/components/schemas/{name}") >= 1


@pytest.mark.parametrize(
    "path",
    ["/v1/chat/completions", "/p/{profile}/v1/chat/completions", "/v1/responses", "/p/{profile}/v1/responses"],
)
def test_turn_routes_document_every_routing_header(path: str) -> None:
    params = [
        SPEC["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]] for p in SPEC["paths"][path]["post"]["parameters"]
    ]
    documented = {p["name"].lower() for p in params if p["in"] == "header"}
    session = {SESSION_HEADER} if "chat" in path else set()
    expected = {"x-hermes-profile", *ROUTING_HEADERS.values(), *IDENTITY_HEADERS.values(), *session, DEPTH_HEADER}
    assert documented == expected
