"""Client connections through a real ``hermes-api serve``: how long an idle one is kept,
all on raw sockets to 127.0.0.1, each closed by the test."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import yaml

from .conftest import HermesHome, ServeProcess

HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def write_config(tmp_path: Path, home: HermesHome, **raw: Any) -> Path:
    raw.setdefault("hermes_home", str(home.root))
    raw.setdefault("expose", "*")
    config = tmp_path / "hermes-api.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a ``content-length`` from ``s``, leaving the connection open.
    Raises ``ConnectionError`` when the server closed it instead."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed by the server after {len(data)} bytes")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server in the body")
        body += chunk
    return int(status_line.split(" ")[1]), headers, body


def closed_within(s: socket.socket, seconds: float) -> bool:
    """True when the server closes ``s`` within ``seconds`` (EOF or reset)."""
    s.settimeout(seconds)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_an_idle_connection_outlives_the_clients_pool_expiry(tmp_path: Path, home: HermesHome, serve_process) -> None:
    """httpx and the OpenAI SDK reuse an idle connection for up to 5 s. A server that
    closed it after 5 s too raced them: a request sent as the server closed was reset
    before any answer (tests/test_isolation.py failed about 1 run in 4). By default the
    server keeps it far longer, so the client always closes first."""
    server: ServeProcess = serve_process(write_config(tmp_path, home), tmp_path / "serve.log")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(HEALTH)
        assert read_response(s)[0] == 200
        time.sleep(6)  # idle past the clients' 5 s
        s.sendall(HEALTH)
        assert read_response(s)[0] == 200


def test_keep_alive_timeout_closes_idle_connections(tmp_path: Path, home: HermesHome, serve_process) -> None:
    server = serve_process(write_config(tmp_path, home, keep_alive_timeout=0.5), tmp_path / "serve.log")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(HEALTH)
        assert read_response(s)[0] == 200
        s.sendall(HEALTH)  # kept alive between requests sent at once
        assert read_response(s)[0] == 200
        assert closed_within(s, 10), "an idle connection is closed after keep_alive_timeout"
