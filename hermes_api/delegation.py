"""Delegation: an agent profile hands a task to another profile, through this server.

``delegation.allow`` in the config names, for each agent profile, the profiles it may
delegate to (docs/delegation.md). Such a profile's agent is given a tool,
``delegate_to_profile`` (``agent/delegate_tool.py``), whose call is an ordinary chat
completion back to this server on loopback: routing, the caller's key, limits,
metrics, the store and the error table apply to it as to any other turn.

This module is the server's side:

- ``grant``: for an agent turn whose profile has targets, what its worker needs to
  call back (``Grant``, sent in the ``turn`` message): the targets, the loopback URL,
  a timeout, and a credential (``credentials``) that names the original caller's key,
  the delegating profile, its conversation and request, and the turn's depth;
- ``admit``: a delegated request (``keys.Caller.delegation``) reaches a target only
  if it is among the delegating profile's targets (403 ``delegation_not_allowed``),
  the key may use it (the usual 403, ``registry.resolve``), and the chain stays
  within ``max_depth`` turns (400 ``delegation_depth_exceeded``), all before any
  provider is called. Depth lives in the credential: ``X-Hermes-Delegate-Depth`` from
  a client can only add to it, never lower it, and nothing raises ``max_depth``;
- ``session``: a delegated request continues one session of the target per caller
  conversation and key, so two delegations from one conversation share the target's
  history (the key's own session namespace applies as for any session).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection, Request

from .credentials import Credential, Credentials
from .errors import DelegationDepthError, DelegationNotAllowedError, InvalidHeaderError
from .headers import header_value
from .keys import DELEGATED_PATH, Caller
from .profiles import Profile
from .settings import Settings

DEPTH_HEADER = "x-hermes-delegate-depth"
_DEPTH_VALUE = re.compile(r"[0-9]{1,3}")
EXPIRY_MARGIN = 30.0  # seconds a credential outlives its turn's turn_timeout
SYSTEM_ROLES = ("system", "developer")


@dataclass(frozen=True, slots=True)
class Grant:
    """What one agent turn may delegate: ``targets`` (profile names), ``url`` (this
    server's chat completions on loopback), the ``credential`` the tool presents,
    ``timeout`` (seconds it waits for one answer) and the turn's ``depth``."""

    targets: tuple[str, ...]
    url: str
    credential: str = ""
    timeout: float = 300.0
    depth: int = 0

    def wire(self) -> dict[str, Any]:
        """The ``turn`` message's ``delegation`` field (``agent/wire.py``)."""
        return {"targets": list(self.targets), "url": self.url, "credential": self.credential,
                "timeout": self.timeout, "depth": self.depth}  # fmt: skip

    def __repr__(self) -> str:  # the credential is a bearer token: never in a log line
        return f"Grant(targets={self.targets!r}, url={self.url!r}, depth={self.depth})"


class Delegation:
    """The server's delegation rules (``settings.delegation``) and its ``credentials``."""

    def __init__(self, settings: Settings, credentials: Credentials) -> None:
        self.rules = settings.delegation
        self.agent = settings.agent
        self.credentials = credentials

    def depth(self, request: HTTPConnection) -> int:
        """The depth of the turn ``request`` runs: 0 for a client's request, one more
        than the delegating turn's for a delegated one, or ``X-Hermes-Delegate-Depth``
        when that is more. Raises ``InvalidHeaderError`` for a header that is not a
        whole number."""
        credential = request.user.delegation
        found = 0 if credential is None else credential.depth + 1
        value = header_value(request.headers, DEPTH_HEADER)
        if value:
            if not _DEPTH_VALUE.fullmatch(value):
                raise InvalidHeaderError(
                    f"The {DEPTH_HEADER} header must be a whole number from 0 to 999.", param=DEPTH_HEADER
                )
            found = max(found, int(value))
        return found

    def admit(self, request: Request, profile: Profile) -> None:
        """Let a turn of ``profile`` run, or raise ``DelegationNotAllowedError`` (a
        delegated request for a profile not among its delegating profile's targets) or
        ``DelegationDepthError`` (its chain would exceed ``max_depth`` turns). A
        malformed ``X-Hermes-Delegate-Depth`` is a 400 also where nothing delegates."""
        if not self.rules:
            self.depth(request)  # the header's shape is checked everywhere, like the other X-Hermes-* ones
            return
        credential: Credential | None = request.user.delegation
        if credential is not None:
            if profile.name not in self.rules.targets(credential.profile):
                raise DelegationNotAllowedError(
                    f"The profile '{credential.profile}' may not delegate to '{profile.name}' "
                    f"(its targets: {', '.join(self.rules.targets(credential.profile)) or 'none'})."
                )
        depth = self.depth(request)
        if depth >= self.rules.max_depth:
            raise DelegationDepthError(
                f"This delegation would make a chain of {depth + 1} turns; at most {self.rules.max_depth} "
                "are allowed (delegation.max_depth). Answer without delegating further.",
                param=DEPTH_HEADER if credential is None else None,
            )

    def session(self, caller: Caller) -> str | None:
        """The target session of a delegated request (its ``X-Hermes-Session-Id``): one per
        delegating profile and caller conversation, under the caller's key like every
        session; None for a client's own request."""
        credential = caller.delegation
        if credential is None:
            return None
        return f"delegated-{credential.profile}-{credential.session}"

    def grant(self, request: Request, profile: Profile, messages: list[Any], session_id: str | None) -> Grant | None:
        """The ``Grant`` of a turn of ``profile`` (None when it may not delegate: not an
        agent profile, no targets, no key, or no loopback address to call back on)."""
        targets = self.rules.targets(profile.name)
        caller: Caller = request.user
        url = callback_url(request.scope)
        if not targets or profile.runtime != "agent" or caller.key is None or url is None:
            return None
        depth = self.depth(request)
        credential = Credential(
            key=caller.key.name,
            profile=profile.name,
            session=conversation(messages, session_id),
            request=str(request.state.request_id),
            depth=depth,
            expires=time.time() + self.agent.profile(profile.name).turn_timeout + EXPIRY_MARGIN,
        )
        return Grant(targets, url, self.credentials.mint(credential), self.rules.timeout, depth)


def conversation(messages: list[Any], session_id: str | None) -> str:
    """A digest naming the conversation a turn belongs to: its ``X-Hermes-Session-Id``,
    else, as Hermes recognises a conversation without one (``api_server.py``
    ``_derive_chat_session_id``), its system messages and first user message, which a
    client resends unchanged with every turn of one chat."""
    if session_id:
        seed = f"id\0{session_id}"
    else:
        system = [m.get("content") for m in messages if isinstance(m, Mapping) and m.get("role") in SYSTEM_ROLES]
        first = next((m.get("content") for m in messages if isinstance(m, Mapping) and m.get("role") == "user"), "")
        seed = "derived\0" + json.dumps([system, first], sort_keys=True, default=str)
    return hashlib.sha256(seed.encode("utf-8", "replace")).hexdigest()[:32]


def callback_url(scope: Mapping[str, Any]) -> str | None:
    """Where a worker reaches this server: its chat completions on the loopback address
    of the family the request came in on, at the port it came in on (ASGI
    ``scope["server"]``); None without a port (a Unix socket)."""
    server = scope.get("server")
    if not server or server[1] is None:
        return None
    host, port = server
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address.is_loopback:
        loop = str(address)
    elif isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        loop = "::1"
    else:
        loop = "127.0.0.1"
    return f"http://{f'[{loop}]' if ':' in loop else loop}:{port}{DELEGATED_PATH}"
