"""docker-compose.yml is a valid Compose file that runs what the README says: two
hermes-api replicas on one PostgreSQL, and Prometheus scraping both.

Docker cannot run here, and its CLI has no compose plugin, so the file is checked
against the Compose Specification's JSON schema as check-jsonschema ships it
(``--builtin-schema vendor.compose-spec``, the schema ``docker compose config``
validates with); the hermes-api config it mounts is loaded as the replicas would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hermes_api.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CHECK = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]


def test_the_compose_file_matches_the_compose_specification() -> None:
    done = subprocess.run([*CHECK, str(ROOT / "docker-compose.yml")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_refuses_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump({"services": {"api": {"image": 5, "restart": "sometimes"}}}))
    done = subprocess.run([*CHECK, str(broken)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "image" in done.stdout


def test_the_compose_file_runs_two_replicas_on_one_database_and_prometheus() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "hermes-api-1", "hermes-api-2", "prometheus"}
    replicas = [services["hermes-api-1"], services["hermes-api-2"]]
    for replica in replicas:
        assert replica["environment"]["HERMES_API_STORE_URL"].startswith("postgresql://hermes:")
        assert replica["environment"]["HERMES_API_STORE_URL"].endswith("@postgres:5432/hermes")
        assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "./deploy/hermes-api.yaml:/etc/hermes-api/hermes-api.yaml:ro" in replica["volumes"]
    assert [r["ports"] for r in replicas] == [["127.0.0.1:8642:8642"], ["127.0.0.1:8643:8642"]]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["hermes-api-1:8642", "hermes-api-2:8642"]


def test_the_replicas_config_is_valid_and_uses_the_postgresql_store(tmp_path: Path) -> None:
    environ = {"HERMES_API_STORE_URL": "postgresql://hermes:pw@postgres:5432/hermes", "HERMES_API_KEY_TEAM": "k" * 32}
    settings = Settings.load(ROOT / "deploy" / "hermes-api.yaml", environ)
    assert settings.store.url == environ["HERMES_API_STORE_URL"] and settings.store.pool_size == 5
    assert [key.name for key in settings.keys] == ["team"] and settings.host == "0.0.0.0"


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
def test_docker_compose_config_accepts_it_where_compose_is_installed() -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("docker has no compose plugin here; the schema check above stands in for it")
    environ = {"POSTGRES_PASSWORD": "pw", "HERMES_API_KEY_TEAM": "k" * 32, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
    )
    assert done.returncode == 0, done.stderr
