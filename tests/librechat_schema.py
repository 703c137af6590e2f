"""LibreChat's own config schema, run on our ``librechat.yaml`` blocks.

LibreChat validates ``librechat.yaml`` at start with the zod ``configSchema`` that its npm
package ``librechat-data-provider`` exports, and refuses a file that fails it. The
package is installed once with npm into the tests' cache directory (``conftest.CACHE``,
``~/.cache/hermes-api-tests/npm``) and run with node (``librechat_schema.js``).

Without node or npm the tests that need it skip, saying why, unless
``HERMES_API_NODE=required`` (``.ci/run`` sets it): then they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import CACHE

PACKAGE = "librechat-data-provider"
VERSION = "0.8.524"
SCRIPT = Path(__file__).with_name("librechat_schema.js")


def unavailable(reason: str) -> None:
    """Skip, or fail when node is required (CI)."""
    if os.environ.get("HERMES_API_NODE") == "required":
        pytest.fail(f"{reason} (HERMES_API_NODE=required)")
    pytest.skip(reason)


def install() -> Path:
    """The prefix ``librechat-data-provider`` is installed under, installing it first if
    it is not there yet. Skips or fails (``unavailable``) without npm, or when npm fails."""
    prefix = CACHE / "npm" / f"{PACKAGE}-{VERSION}"
    installed = prefix / "node_modules" / PACKAGE / "package.json"
    if installed.is_file() and json.loads(installed.read_text())["version"] == VERSION:
        return prefix
    npm = shutil.which("npm")
    if npm is None:
        unavailable(f"npm is not installed: cannot install {PACKAGE} to check LibreChat's schema")
    prefix.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--omit=dev", f"{PACKAGE}@{VERSION}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        unavailable(f"npm install {PACKAGE}@{VERSION} took over 300 s")
    if done.returncode != 0 or not installed.is_file():
        unavailable(f"npm install {PACKAGE}@{VERSION} failed: {done.stderr.strip()[-500:]}")
    return prefix


def check(texts: list[str]) -> tuple[str, list[list[str]]]:
    """LibreChat's config version, and for each YAML text, in order, the schema's
    complaints (``"<path>: <message>"``; none when it passes)."""
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed: cannot run LibreChat's config schema")
    prefix = install()
    env = {**os.environ, "NODE_PATH": str(prefix / "node_modules")}
    done = subprocess.run(
        [node, str(SCRIPT)], input=json.dumps(texts), capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    head, *results = json.loads(done.stdout)
    return head["version"], [r.get("issues", []) for r in results]
