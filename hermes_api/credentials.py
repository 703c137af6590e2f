"""Delegation credentials: what lets an agent's delegated request run as its caller.

When an agent turn's profile may delegate (``delegation``), the server mints one
credential for that turn and hands it to the profile's worker in the ``turn`` message
(``agent/wire.py``); the worker's delegation tool presents it as ``Authorization:
Bearer <credential>`` to this server on loopback. The worker never holds an API key.

A credential names the original caller (the API key's *name*, ``keys.Caller``), the
delegating profile, its conversation and request, the depth of the delegating turn,
and when it expires (the delegating turn's ``turn_timeout`` from its start). It is
signed with HMAC-SHA256 (RFC 2104) under a secret of this server: 32 random bytes in
``<state_dir>/delegation.secret``, created once with mode ``0600`` and read by every
process that shares the ``state_dir`` (``serve --workers``), so a credential minted
by one is accepted by another. A client cannot forge or alter one, nor extend it.

Text form: ``hermes-delegation.<claims>.<signature>``, both base64url without padding,
the claims a JSON object: ``key``, ``profile``, ``session``, ``request``, ``depth``,
``expires`` (Unix seconds). ``keys.KeyRing`` accepts it only from loopback, without
proxy headers, on ``POST .../v1/chat/completions``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import AuthenticationError

logger = logging.getLogger("hermes_api")

PREFIX = "hermes-delegation."
SECRET_FILE = "delegation.secret"
SECRET_BYTES = 32
MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Credential:
    """The claims of one credential. ``key``: the caller's API key name; ``profile``:
    the delegating profile; ``session``: the delegating turn's conversation (a digest,
    ``delegation.conversation``); ``request``: its ``x-request-id``; ``depth``: the
    delegating turn's depth (0 for a client's own request: the turn it delegates to is
    at ``depth + 1``); ``expires``: Unix seconds."""

    key: str
    profile: str
    session: str
    request: str
    depth: int
    expires: float


class Credentials:
    """Mints and verifies credentials with the server secret in ``state_dir``; ``open()``
    (file I/O: call it off the event loop) reads or creates it."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / SECRET_FILE
        self._secret: bytes | None = None

    def open(self) -> None:
        """Read the secret, creating it first (mode 0600) when no process has. Creation
        is atomic (``link`` of a complete file), so processes starting together agree."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            _create_secret(self.path)
        if self.path.stat().st_mode & 0o077:
            logger.warning("%s can be read by other users; it should be mode 0600", self.path)
        secret = bytes.fromhex(self.path.read_text().strip())
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"{self.path} holds no valid secret; delete it to make a new one")
        self._secret = secret

    def _key(self) -> bytes:
        if self._secret is None:
            raise RuntimeError("Credentials.open() was not called")
        return self._secret

    def mint(self, credential: Credential) -> str:
        """The text form of ``credential``, signed."""
        claims = _b64(json.dumps(asdict(credential), separators=(",", ":"), sort_keys=True).encode())
        return f"{PREFIX}{claims}.{_b64(self._sign(claims))}"

    def _sign(self, claims: str) -> bytes:
        return hmac.new(self._key(), claims.encode("ascii"), hashlib.sha256).digest()

    def verify(self, token: str, now: float | None = None) -> Credential:
        """The claims of a genuine, unexpired credential. Raises ``AuthenticationError``
        (401) for anything else, saying only that it is not valid."""
        refused = AuthenticationError("Invalid or expired delegation credential.")
        if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_CHARS:
            raise refused
        claims, _, signature = token[len(PREFIX) :].partition(".")
        try:
            genuine = hmac.compare_digest(_unb64(signature), self._sign(claims))
            found = json.loads(_unb64(claims)) if genuine else None
            credential = Credential(**found) if isinstance(found, dict) else None
        except (ValueError, TypeError, UnicodeError, binascii.Error):
            credential = None
        if credential is None or not _well_typed(credential):
            raise refused
        if credential.expires < (time.time() if now is None else now):
            raise refused
        return credential


def _well_typed(c: Credential) -> bool:
    texts = (c.key, c.profile, c.session, c.request)
    depth_ok = isinstance(c.depth, int) and not isinstance(c.depth, bool) and c.depth >= 0
    return all(isinstance(t, str) for t in texts) and depth_ok and isinstance(c.expires, (int, float))


def _create_secret(path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(SECRET_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: theirs stands
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
