"""Log output: uvicorn's text lines (``log_format: text``, the default) or one JSON
object per line (``log_format: json``), through the standard ``logging`` module.

With ``json`` every record is ``{"time", "level", "logger", "message"}`` (and
``exception`` with its traceback), and each request adds one record of the
``hermes_api.access`` logger whose fields are ``exchange.Exchange.log_fields``: request
id, key name, profile, endpoint, status, latencies, tokens, the provider's status. It
replaces uvicorn's access line. No field is ever an API key, a provider key or a
``.env`` value: keys appear by name only.

``serve`` installs ``log_config``; under ``uvicorn --factory`` pass an equivalent
``--log-config`` (a dictConfig file naming ``hermes_api.logs.JSONFormatter``).
"""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
import uvicorn


class JSONFormatter(logging.Formatter):
    """A record as one line of JSON; a record's ``fields`` (a dict, given as
    ``extra={"fields": ...}``) are merged in at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def log_config(level: str, log_format: str = "text") -> dict[str, Any]:
    """uvicorn's logging config (a ``logging.config.dictConfig`` mapping), with the
    ``hermes_api`` logger on its default handler; for ``json`` every handler writes
    ``JSONFormatter`` lines and ``hermes_api.access`` writes the request lines to stdout."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["hermes_api"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    if log_format == "json":
        config["formatters"]["json"] = {"()": "hermes_api.logs.JSONFormatter"}
        for handler in config["handlers"].values():
            handler["formatter"] = "json"
        config["loggers"]["hermes_api.access"] = {"handlers": ["access"], "level": "INFO", "propagate": False}
    return config
