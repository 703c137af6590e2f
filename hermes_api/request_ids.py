"""Request ids: the ``x-request-id`` every answer carries, the client's own when sane.

``app.RequestIdMiddleware`` puts one on every answer of the app; ``protocol`` on the
answers it writes itself (400, 408, 431, 503). Logs name a request by it.
"""

from __future__ import annotations

import re
import uuid

# What a client may choose as its own request id; anything else gets a fresh one.
CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def new_request_id() -> str:
    """A fresh id, ``req_`` and 32 hex digits."""
    return f"req_{uuid.uuid4().hex}"
