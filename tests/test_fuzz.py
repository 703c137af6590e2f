"""Schemathesis fuzzes every operation of ``openapi/openapi.yaml`` against hermes-api
under uvicorn on loopback, its provider a real local process: no 5xx, and every
response (status, headers, content type, body) as the spec says.

Bounded: ``FUZZ_EXAMPLES`` examples per operation (schemathesis also sends negative
and edge cases), derandomised so CI is repeatable; ``HERMES_API_FUZZ_EXAMPLES`` raises
it for a longer local run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from hermes_api.app import create_app
from hermes_api.settings import Settings

from .conftest import FakeUpstream, HermesHome, LiveServer, digest

pytestmark = pytest.mark.slow
SPEC = Path(__file__).resolve().parent.parent / "openapi" / "openapi.yaml"
FUZZ_EXAMPLES = int(os.environ.get("HERMES_API_FUZZ_EXAMPLES", "150"))
KEY = "fuzz-key"

# A schema-valid request may still be a 400: the rules that span fields and headers
# (the URL prefix, X-Hermes-Profile and `model` must agree; a routed request needs
# some profile) are beyond what OpenAPI can say. Every other check runs as it ships.
CONFIG = SchemathesisConfig.from_str(
    """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "429"]
"""
)
schema = schemathesis.openapi.from_path(SPEC, config=CONFIG)


@pytest.fixture(scope="module")
def fuzz_server(fake_upstream: FakeUpstream, tmp_path_factory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("fuzz")
    home = HermesHome(root / "hermes")
    for name in ("default", "alpha", "beta", "hidden"):
        home.add(name, model={"default": f"m-{name}", "provider": "custom", "base_url": fake_upstream.base_url("ok")})
    config = root / "hermes-api.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hermes_home": str(home.root),
                "expose": ["default", "alpha", "beta"],
                "keys": [{"name": "fuzz", "key_sha256": digest(KEY), "profiles": ["default", "alpha"]}],
                "routes": [{"chat_id": "room", "profile": "alpha"}],
                "max_body_bytes": 200_000,
            }
        )
    )
    with LiveServer(create_app(Settings.load(config, {}), environ={})) as server:
        yield server


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,  # derandomised: nothing to replay
    suppress_health_check=list(HealthCheck),
)
def test_fuzz_the_spec(case, fuzz_server: LiveServer) -> None:
    case.call_and_validate(base_url=fuzz_server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
