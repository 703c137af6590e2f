# The real clients the e2e suite installs and tests; sourced by e2e/setup.sh and e2e/run,
# read by e2e/conftest.py. The SDK matrix: the oldest 2.x the project supports (the
# pyproject lower bound) and the newest 3.x, each in its own venv.
OPEN_WEBUI_VERSION=0.12.4
OPENAI_SDK_VERSIONS="2.0.0 3.52.0"
