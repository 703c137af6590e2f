"""The request headers a profile is chosen by (docs/contract.md §3), read and sanitised.

``X-Hermes-*`` headers count for every caller; the identity headers that Open WebUI and
LibreChat send for their signed-in user count only for API keys with
``trusted_identity: true`` and are not even read for the others, nor when no route could
use them (``ProfileRegistry.select``: the request names its profile, or no route matches
on that field). A value may have at most 256 characters of UTF-8 and no control
characters; an identity value that is read must also be ASCII and hold no unexpanded
``{{...}}`` placeholder. Anything else is 400 ``invalid_header`` naming the header.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import InvalidHeaderError
from .settings import MAX_ROUTE_VALUE_CHARS, PLACEHOLDER

MAX_HEADER_CHARS = MAX_ROUTE_VALUE_CHARS
ROUTING_HEADERS = {
    "chat_id": "x-hermes-chat-id",
    "user_id": "x-hermes-user-id",
    "thread_id": "x-hermes-thread-id",
}
# Read only for keys with trusted_identity: true. Open WebUI's names are its own
# (ENABLE_FORWARD_USER_INFO_HEADERS, open_webui/utils/headers.py); the LibreChat ones are
# ours, filled by the librechat.yaml `headers:` block in docs/clients.md.
IDENTITY_HEADERS = {
    "openwebui_user_id": "x-openwebui-user-id",
    "openwebui_user_email": "x-openwebui-user-email",
    "openwebui_chat_id": "x-openwebui-chat-id",
    "librechat_user_id": "x-librechat-user-id",
    "librechat_user_email": "x-librechat-user-email",
    "librechat_conversation_id": "x-librechat-conversation-id",
}
_HERMES_PREFIX = (b"x-hermes-",)
_IDENTITY_PREFIXES = (b"x-hermes-", b"x-openwebui-", b"x-librechat-")


def routing_headers(headers: Mapping[str, str], *, identity: bool) -> Mapping[str, str]:
    """The headers routing may read (``x-hermes-*``, and with ``identity`` the identity
    ones too), the first of each name. Starlette's ``Headers`` are read in one pass over
    their raw list; any other mapping is used as it is."""
    raw = getattr(headers, "raw", None)
    if raw is None:
        return headers
    wanted = _IDENTITY_PREFIXES if identity else _HERMES_PREFIX
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(raw) if k.startswith(wanted)}


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """A routing header's value, or None when absent. Raises ``InvalidHeaderError``
    (param = the header) when it is over 256 characters, not UTF-8, or holds a control
    character. Starlette decodes header bytes as Latin-1; they are re-read as UTF-8."""
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise InvalidHeaderError(f"The {name} header is not valid UTF-8.", param=name) from None
    if len(value) > MAX_HEADER_CHARS:
        raise InvalidHeaderError(f"The {name} header is longer than {MAX_HEADER_CHARS} characters.", param=name)
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise InvalidHeaderError(f"The {name} header contains control characters.", param=name)
    return value


def identity_value(headers: Mapping[str, str], name: str) -> str | None:
    """An identity header's value, or None when absent: ``header_value``'s rules, and
    it must be ASCII with no unexpanded ``{{...}}`` placeholder (a client template that
    failed, which must not route as a literal). Raises ``InvalidHeaderError``."""
    value = header_value(headers, name)
    if value is None:
        return None
    if not value.isascii():
        raise InvalidHeaderError(f"The {name} header is not ASCII.", param=name)
    if PLACEHOLDER.search(value):
        raise InvalidHeaderError(
            f"The {name} header holds an unexpanded placeholder; check the client's header template.",
            param=name,
        )
    return value
