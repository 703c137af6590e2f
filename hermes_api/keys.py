"""Who is calling: API keys checked in constant time (docs/contract.md §2).

Plugged into Starlette's ``AuthenticationMiddleware``: every route but ``PUBLIC_PATHS`` needs
a valid ``Authorization: Bearer <key>`` once any key is configured. A delegated request
presents a delegation credential instead (``credentials``), accepted only from this
machine on chat completions; it runs as the original caller's key. With none configured
the server is open, to this machine only: ``cli`` refuses to bind anything but loopback,
and, whatever started the app (``uvicorn --factory --host 0.0.0.0``, another ASGI
server), a request that arrived on a non-loopback address of this machine (ASGI
``scope["server"]``, the local end of its connection) gets 401.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
)
from starlette.authentication import (
    AuthenticationError as StarletteAuthenticationError,
)
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import Scope

from .credentials import PREFIX as CREDENTIAL_PREFIX
from .credentials import Credential, Credentials
from .errors import AuthenticationError, error_response
from .settings import APIKey

logger = logging.getLogger("hermes_api")

# /metrics checks its own callers (endpoints/metrics.py): loopback, or a metrics key.
PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
DELEGATED_PATH = "/v1/chat/completions"  # the one route a delegation credential opens


@dataclass(frozen=True, slots=True)
class Caller(BaseUser):
    """The authenticated caller: ``key`` None when the server has no keys (open);
    ``delegation`` the credential of a delegated request, which runs as ``key``, the
    key of the request that delegated it."""

    key: APIKey | None
    delegation: Credential | None = None

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.key.name if self.key else "anonymous"

    @property
    def trusted_identity(self) -> bool:
        return self.key.trusted_identity if self.key else False

    @property
    def owner(self) -> str:
        """Whose stored data this caller may see: the hex SHA-256 of its key, or
        ``"open"`` on a server without keys. Never the key itself."""
        return self.key.digest.hex() if self.key else "open"

    def may_use(self, profile: str) -> bool:
        """True when this caller's key allows ``profile`` (an exposed profile's name)."""
        return self.key is None or self.key.profiles is None or profile in self.key.profiles


class KeyRing(AuthenticationBackend):
    """The configured keys, by SHA-256 digest; ``authenticate`` is Starlette's hook."""

    def __init__(self, keys: Iterable[APIKey], credentials: Credentials | None = None) -> None:
        self._keys = tuple(keys)
        self._by_name = {k.name: k for k in self._keys if sum(o.name == k.name for o in self._keys) == 1}
        self._credentials = credentials
        self._open = Caller(None)
        self._warned = False

    def identify(self, authorization: str | None) -> Caller:
        """The caller for an ``Authorization`` header value. Every configured digest is
        compared with ``hmac.compare_digest`` (no early exit), so timing says nothing
        about which key, or how much of one, matched. Raises ``AuthenticationError``."""
        if not self._keys:
            return self._open
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("Missing API key: send it as 'Authorization: Bearer <key>'.")
        # Starlette decodes header bytes as Latin-1: encoding back gives the bytes the
        # client sent, which for a UTF-8 key are the UTF-8 bytes its digest was made from.
        digest = hashlib.sha256(token.strip().encode("latin-1")).digest()
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is None:
            raise AuthenticationError("Incorrect API key provided.")
        return Caller(found)

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, Caller] | None:
        if conn.scope["path"] in PUBLIC_PATHS:  # not conn.url: building it cost ~3 µs a request
            return None
        if not self._keys and arrived_from_network(conn.scope):
            if not self._warned:
                self._warned = True
                logger.warning("refusing requests from the network: no API key is configured (keys, API_SERVER_KEY)")
            raise StarletteAuthenticationError(
                "This server has no API key configured, so it answers only on its loopback address; "
                "configure keys (or API_SERVER_KEY) to serve the network."
            )
        authorization = conn.headers.get("authorization")
        scheme, _, token = (authorization or "").partition(" ")
        try:
            if scheme.lower() == "bearer" and token.strip().startswith(CREDENTIAL_PREFIX):
                caller = self.delegated(conn, token.strip())
            else:
                caller = self.identify(authorization)
        except AuthenticationError as exc:
            raise StarletteAuthenticationError(exc.message) from exc
        return AuthCredentials(["authenticated"]), caller

    def delegated(self, conn: HTTPConnection, token: str) -> Caller:
        """The caller of a delegated request: the credential's key, with the credential.
        Raises ``AuthenticationError`` unless delegation is configured, the request came
        from this machine (a loopback client, no proxy header) for chat completions, and
        the credential is genuine, unexpired and names a configured key."""
        if self._credentials is None or not self._keys:
            raise AuthenticationError("Delegation credentials are not accepted by this server.")
        if not from_loopback(conn) or not conn.scope["path"].endswith(DELEGATED_PATH):
            raise AuthenticationError(
                "A delegation credential is accepted only from this machine, for chat completions."
            )
        credential = self._credentials.verify(token)
        key = self._by_name.get(credential.key)
        if key is None:
            raise AuthenticationError("Invalid or expired delegation credential.")
        return Caller(key, credential)


def arrived_from_network(scope: Scope) -> bool:
    """True when the connection came in on a non-loopback IP address of this machine.
    A Unix socket, or a name instead of an address (an in-process test client), is not."""
    server = scope.get("server")
    try:
        address = ipaddress.ip_address(server[0]) if server else None
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 on a dual-stack bind
    return address is not None and not address.is_loopback


def from_loopback(conn: HTTPConnection) -> bool:
    """True when the client is on this machine (a loopback address) and no proxy header
    (``Forwarded``, ``X-Forwarded-For``, ``X-Real-IP``) says it forwards another."""
    client = conn.client
    if client is None or any(h in conn.headers for h in PROXY_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(client.host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 on a dual-stack bind
    return address.is_loopback


def on_auth_error(conn: HTTPConnection, exc: Exception) -> Response:
    """``AuthenticationMiddleware``'s error hook: the 401 envelope of §5."""
    return error_response(AuthenticationError(str(exc)))
