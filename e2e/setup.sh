#!/usr/bin/env bash
# Install what the e2e suite needs on a fresh Debian machine; idempotent and cached.
#
#   - Debian's chromium (for Playwright; a browser download of Playwright's own fails here)
#   - Open WebUI 0.12.4, slim (no torch), in its own venv: it pins many packages
#   - the OpenAI SDK versions of the compatibility matrix, one small venv each
#   - the playwright Python package in the project's .venv (the `e2e` extra)
#
# Venvs live under $HERMES_E2E_CACHE (default ~/.cache/hermes-api-e2e), outside the
# checkout, so a second run (or CI on the same machine) reuses them; each venv is only
# marked done after its install succeeded. pip's own wheel cache makes a rebuild quick.
# Open WebUI runs headless and offline with the settings e2e/stack.py gives it
# (Open WebUI's backend/open_webui/env.py and config.py name them).
set -euo pipefail
cd "$(dirname "$0")/.."
source e2e/versions.sh
export PIP_DISABLE_PIP_VERSION_CHECK=1
CACHE="${HERMES_E2E_CACHE:-$HOME/.cache/hermes-api-e2e}"
mkdir -p "$CACHE"
say() { echo "e2e setup: $*"; }

# Another apt run on this machine holds the lock for a while: wait for it (bounded).
apt_get() {
    local tries=0
    until apt-get -o DPkg::Lock::Timeout=300 "$@"; do
        tries=$((tries + 1))
        if [ "$tries" -ge 20 ]; then return 1; fi
        sleep 15
    done
}

if [ ! -x /usr/bin/chromium ]; then
    say "installing Debian's chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt_get update -q >/dev/null
    apt_get install -y -q chromium >/dev/null
fi
say "$(/usr/bin/chromium --version 2>/dev/null || echo 'chromium missing')"

# Open WebUI, slim: the wheel with --no-deps, then its own requirements-slim.txt.
OWUI="$CACHE/open-webui-$OPEN_WEBUI_VERSION"
if [ ! -f "$OWUI/.done" ]; then
    say "installing Open WebUI $OPEN_WEBUI_VERSION (slim) into $OWUI"
    rm -rf "$OWUI"
    python3 -m venv "$OWUI"
    dl="$OWUI/dl"
    "$OWUI/bin/pip" download -q --no-deps "open-webui==$OPEN_WEBUI_VERSION" -d "$dl"
    wheel=("$dl"/open_webui-"$OPEN_WEBUI_VERSION"-*.whl)
    python3 -c "import sys, zipfile; sys.stdout.write(zipfile.ZipFile(sys.argv[1]).read('requirements-slim.txt').decode())" \
        "${wheel[0]}" > "$OWUI/requirements-slim.txt"
    "$OWUI/bin/pip" install -q --no-deps "${wheel[0]}"
    # pip's "requires ... which is not installed" warnings are expected for the slim set:
    # keep its output in a log, show it only when the install fails.
    if ! "$OWUI/bin/pip" install -q -r "$OWUI/requirements-slim.txt" > "$OWUI/pip.log" 2>&1; then
        cat "$OWUI/pip.log"
        exit 1
    fi
    "$OWUI/bin/python" -c "import open_webui" # fails the setup if the install is broken
    rm -rf "$dl"
    touch "$OWUI/.done"
fi
say "open-webui $("$OWUI/bin/pip" show open-webui 2>/dev/null | sed -n 's/^Version: //p')"

# The SDK matrix: one venv per version, nothing but the SDK in it.
for version in $OPENAI_SDK_VERSIONS; do
    venv="$CACHE/openai-$version"
    if [ ! -f "$venv/.done" ]; then
        say "installing openai==$version into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "openai==$version"
        touch "$venv/.done"
    fi
done

if ! .venv/bin/python -c "import playwright" 2>/dev/null; then
    say "installing the e2e extra (playwright) into .venv"
    # llama.cpp for any CPU of this kind, as the README's commands build it (README, "Why CMAKE_ARGS").
    CMAKE_ARGS=-DGGML_NATIVE=OFF .venv/bin/pip install -q -e '.[test,demo,e2e]'
fi
say "ready (cache: $CACHE)"
