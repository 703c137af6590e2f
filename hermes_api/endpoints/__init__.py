"""HTTP endpoints, one module per resource; each handler is named after OpenAI's
``operationId`` (``openapi/openapi.yaml``, as OpenAI's spec names them) and stays thin:
parse, resolve, delegate, render."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSONResponse(Response):
    """A JSON response rendered with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
