"""Fixtures of the e2e suite: a recording upstream, hermes-api and Open WebUI as real processes.

The stack for the recorded tests (``recorded_stack``, one per session):

    Open WebUI 0.12.4  →  hermes-api serve  →  RecordingUpstream
    (key "webui")         profiles alpha, beta, gamma; key "webui" may use alpha and beta,
                          trusted_identity: true; route openwebui_user_email
                          admin@localhost → beta

Everything installs with ``bash e2e/setup.sh``. Missing pieces skip these tests, unless
``HERMES_API_E2E=required`` (CI), where they fail. Every process is stopped by PID.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hermes_api.demo import find_weights, free_port, llama_server

from .recorder import RecordingUpstream
from .stack import (
    ARTIFACTS,
    OPEN_WEBUI_BIN,
    OpenWebUIClient,
    Service,
    hermes_api,
    open_webui,
    record_figure,
    write_home,
)

WEBUI_KEY = "e2e-webui-key-0123456789"
PROFILES = {"alpha": "upstream-alpha", "beta": "upstream-beta", "gamma": "upstream-gamma"}
ALLOWED = ["alpha", "beta"]
ADMIN_EMAIL = "admin@localhost"  # the WEBUI_AUTH=false user (open_webui/routers/auths.py)


def need(condition: bool, message: str) -> None:
    """Skip, or fail when the suite is required (CI sets HERMES_API_E2E=required)."""
    if not condition:
        if os.environ.get("HERMES_API_E2E") == "required":
            pytest.fail(f"{message} (run: bash e2e/setup.sh)")
        pytest.skip(f"{message} (run: bash e2e/setup.sh)")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Screenshots and figures land here: the CI artifact folder."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def hermes_config(home: Path, **extra: object) -> dict[str, object]:
    return {
        "hermes_home": str(home),
        "expose": sorted(PROFILES),
        "default_profile": "alpha",
        "keys": [{"name": "webui", "key_env": "E2E_WEBUI_KEY", "profiles": ALLOWED, "trusted_identity": True}],
        "routes": [{"openwebui_user_email": ADMIN_EMAIL, "profile": "beta"}],
        **extra,
    }


@dataclass
class Stack:
    """One running Open WebUI → hermes-api → upstream chain."""

    upstream: RecordingUpstream
    hermes: Service
    webui: Service
    client: OpenWebUIClient

    @property
    def hermes_url(self) -> str:
        return self.hermes.url  # type: ignore[attr-defined]

    @property
    def webui_url(self) -> str:
        return self.webui.url  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def recorded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    need(OPEN_WEBUI_BIN.exists(), f"Open WebUI is not installed at {OPEN_WEBUI_BIN}")
    work = tmp_path_factory.mktemp("recorded")
    with RecordingUpstream() as upstream:
        home = write_home(work / "home", upstream.url, PROFILES)
        with hermes_api(work, hermes_config(home), {"E2E_WEBUI_KEY": WEBUI_KEY}) as hermes:
            webui = open_webui(work, hermes.url + "/v1", WEBUI_KEY)  # type: ignore[attr-defined]
            with webui:
                record_figure("open_webui_startup_seconds", round(webui.startup_seconds or 0, 2))
                client = OpenWebUIClient(webui.url)  # type: ignore[attr-defined]
                try:
                    yield Stack(upstream, hermes, webui, client)
                finally:
                    client.close()
                    _keep_log(webui)


def _keep_log(service: Service) -> None:
    """Copy a service's log next to the screenshots (CI artifacts)."""
    try:
        shutil.copy(service.log, ARTIFACTS / f"{service.name}-{service.log.parent.name}.log")
    except OSError:
        pass


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's server on SmolLM2-135M (the demo extra), its ``/v1`` URL."""
    weights = find_weights()
    need(weights is not None, "the SmolLM2 weights (the demo extra) are not installed")
    assert weights is not None
    log = tmp_path_factory.mktemp("llama") / "llama.log"
    with llama_server(weights, free_port(), log) as url:
        yield url
