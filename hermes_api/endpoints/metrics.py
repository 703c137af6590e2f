"""``GET /metrics``: Prometheus's text exposition format (``metrics.Metrics.render``).

Who may read it: when some key has ``metrics: true``, a request with one of those
keys, from anywhere (another key: 403, none or a wrong one: 401); when none has it,
clients on this machine only (a loopback address, and no ``Forwarded``,
``X-Forwarded-For`` or ``X-Real-IP`` header, so a reverse proxy on this machine does
not make the world local). It is never open to the network by default.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..errors import ForbiddenError
from ..keys import from_loopback
from ..metrics import CONTENT_TYPE


async def get_metrics(request: Request) -> Response:
    """Every metric, as a Prometheus scrape reads it. Raises ``AuthenticationError``
    (401) and ``ForbiddenError`` (403) as the module docstring says."""
    state = request.state
    if state.settings.metrics_keys:
        caller = state.keyring.identify(request.headers.get("authorization"))
        if caller.key is None or not caller.key.metrics:
            raise ForbiddenError(f"The API key '{caller.display_name}' may not read /metrics (needs metrics: true).")
    elif not from_loopback(request):
        raise ForbiddenError("/metrics answers clients on this machine only, unless a key has metrics: true.")
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
