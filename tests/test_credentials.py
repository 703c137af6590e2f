"""Delegation credentials: signed, expiring, naming the caller; one secret per state_dir."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from hermes_api.credentials import PREFIX, SECRET_FILE, Credential, Credentials
from hermes_api.errors import AuthenticationError

CLAIMS = Credential(key="alice", profile="alpha", session="s1", request="req_1", depth=0, expires=4102444800.0)


def opened(state_dir: Path) -> Credentials:
    credentials = Credentials(state_dir)
    credentials.open()
    return credentials


def test_a_credential_round_trips_and_the_secret_is_private(tmp_path: Path) -> None:
    credentials = opened(tmp_path / "state")
    token = credentials.mint(CLAIMS)
    assert token.startswith(PREFIX) and credentials.verify(token) == CLAIMS
    secret = tmp_path / "state" / SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    assert secret.read_text().strip() not in token


def test_every_process_of_a_state_dir_agrees(tmp_path: Path) -> None:
    """``serve --workers``: processes that start together create one secret, and a
    credential minted by one is accepted by the others."""
    script = (
        "import sys, time; from pathlib import Path; from hermes_api.credentials import Credential, Credentials\n"
        "c = Credentials(Path(sys.argv[1])); c.open()\n"
        "print(c.mint(Credential('alice', 'alpha', 's', 'r', 0, 4102444800.0)))\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "shared")], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    tokens = set()
    for process in processes:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        tokens.add(out.strip())
    assert len(tokens) == 1  # one secret: the same claims, the same signature
    assert opened(tmp_path / "shared").verify(tokens.pop()).key == "alice"
    assert [p.name for p in (tmp_path / "shared").iterdir()] == [SECRET_FILE]  # no temporary file left


def test_another_servers_credential_is_refused(tmp_path: Path) -> None:
    token = opened(tmp_path / "one").mint(CLAIMS)
    with pytest.raises(AuthenticationError):
        opened(tmp_path / "two").verify(token)


def _resigned(credentials: Credentials, claims: dict) -> str:
    """A token whose claims were changed after signing, keeping the old signature."""
    token = credentials.mint(CLAIMS)
    _, signature = token.removeprefix(PREFIX).split(".")
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{PREFIX}{body}.{signature}"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"depth": -1}, id="lower-depth"),
        pytest.param({"key": "mallory"}, id="other-key"),
        pytest.param({"expires": 4102444800.0}, id="longer-life"),
    ],
)
def test_altered_claims_are_refused(tmp_path: Path, change: dict) -> None:
    credentials = opened(tmp_path)
    claims = {"key": "alice", "profile": "alpha", "session": "s1", "request": "req_1", "depth": 0,
              "expires": CLAIMS.expires, **change}  # fmt: skip
    with pytest.raises(AuthenticationError):
        credentials.verify(_resigned(credentials, claims))


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("hermes-delegation.", id="empty"),
        pytest.param("hermes-delegation.e30.", id="no-signature"),
        pytest.param("hermes-delegation.\u00e9t\u00e9.AAAA", id="not-ascii"),
        pytest.param("hermes-delegation." + "A" * 5000, id="too-long"),
        pytest.param("sk-not-a-credential", id="not-one"),
    ],
)
def test_garbage_is_refused(tmp_path: Path, token: str) -> None:
    with pytest.raises(AuthenticationError):
        opened(tmp_path).verify(token)


def test_an_expired_credential_is_refused(tmp_path: Path) -> None:
    credentials = opened(tmp_path)
    token = credentials.mint(replace(CLAIMS, expires=1000.0))
    assert credentials.verify(token, now=999.0).key == "alice"
    with pytest.raises(AuthenticationError):
        credentials.verify(token, now=1000.5)


def test_wrongly_typed_claims_are_refused_even_when_signed(tmp_path: Path) -> None:
    credentials = opened(tmp_path)
    for bad in (replace(CLAIMS, depth=True), replace(CLAIMS, depth=-1), replace(CLAIMS, key=3)):  # type: ignore[arg-type]
        with pytest.raises(AuthenticationError):
            credentials.verify(credentials.mint(bad))


def test_a_damaged_secret_file_is_an_error_not_a_weak_key(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_text("abcd\n")
    with pytest.raises(ValueError, match="delete it"):
        Credentials(tmp_path).open()
