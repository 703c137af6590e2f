"""The OpenAI SDK compatibility matrix: each version in its own venv, against a live
``hermes-api serve`` whose profiles a recording upstream answers.

Versions (``e2e/versions.sh``): the oldest 2.x the project supports (2.0.0, the first
2.x: the pyproject lower bound) and the newest 3.x; 2.x speaks httpx, 3.x httpx2.
Each runs ``e2e/sdk_check.py``: models, chat and chat streaming, sync and async,
routing headers (``default_headers`` / ``extra_headers``), the 403/404 exception
classes, and the Responses API (skipped, saying so, while ``/v1/responses`` is 404).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator

import pytest

from .conftest import need
from .recorder import RecordingUpstream
from .stack import ROOT, SDK_VERSIONS, hermes_api, record_figure, sdk_python, write_home

pytestmark = pytest.mark.e2e
KEY = "e2e-sdk-key-0123456789"
PROFILES = {"alpha": "upstream-alpha", "beta": "upstream-beta", "gamma": "upstream-gamma"}
CHAT_CHECKS = {
    "sync models",
    "sync chat",
    "sync chat stream",
    "sync routing headers",
    "sync errors",
    "async chat",
    "async chat stream",
    "async concurrent profiles",
}
RESPONSES_CHECKS = {"sync responses", "async responses"}  # skip until issue 3 serves /v1/responses


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("sdk")
    with RecordingUpstream() as upstream:
        config = {
            "hermes_home": str(write_home(work / "home", upstream.url, PROFILES)),
            "expose": sorted(PROFILES),
            "default_profile": "alpha",
            "keys": [{"name": "sdk", "key_env": "E2E_SDK_KEY", "profiles": ["alpha", "beta"]}],
        }
        with hermes_api(work, config, {"E2E_SDK_KEY": KEY}) as hermes:
            yield hermes.url + "/v1"  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def sdk_results(server: str) -> Callable[[str], dict[str, dict[str, str]]]:
    """Run ``sdk_check.py`` once per SDK version; its results by check name."""
    cache: dict[str, dict[str, dict[str, str]]] = {}

    def results(version: str) -> dict[str, dict[str, str]]:
        if version not in cache:
            python = sdk_python(version)
            need(python.exists(), f"no venv with openai=={version} at {python.parent.parent}")
            run = subprocess.run(
                [str(python), str(ROOT / "e2e" / "sdk_check.py"), "--base-url", server, "--key", KEY],
                capture_output=True,
                text=True,
                timeout=180,
            )
            lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
            cache[version] = {line["check"]: line for line in lines}
            assert cache[version].get("version", {}).get("detail") == version, run.stdout + run.stderr
            assert set(cache[version]) - {"version"} == CHAT_CHECKS | RESPONSES_CHECKS, run.stdout + run.stderr
        return cache[version]

    return results


@pytest.mark.parametrize("version", SDK_VERSIONS)
def test_chat_sync_and_async(sdk_results, version: str) -> None:
    results = {name: r for name, r in sdk_results(version).items() if name in CHAT_CHECKS}
    failed = {name: r["detail"] for name, r in results.items() if r["status"] != "pass"}
    assert not failed, failed
    record_figure(f"openai_sdk_{version}_chat", sorted(results))


@pytest.mark.parametrize("version", SDK_VERSIONS)
def test_responses_sync_and_async(sdk_results, version: str) -> None:
    results = {name: r for name, r in sdk_results(version).items() if name in RESPONSES_CHECKS}
    failed = {name: r["detail"] for name, r in results.items() if r["status"] == "fail"}
    assert not failed, failed
    skipped = {r["detail"] for r in results.values() if r["status"] == "skip"}
    if skipped:
        pytest.skip("; ".join(sorted(skipped)))
    record_figure(f"openai_sdk_{version}_responses", sorted(results))
