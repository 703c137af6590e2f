#!/usr/bin/env bash
# The benchmark in one command, on Debian/Ubuntu: install what it needs (idempotent),
# then run it. Arguments go to `python -m bench` (default: every part), e.g.
#   bench/run.sh                      # gateways, scale, streams; writes bench/RESULTS.md
#   bench/run.sh gateways --rounds 5  # one part, more rounds
#   bench/run.sh agent                # Hermes's own API server beside the agent runtime
# Needs root or sudo the first time (apt-get install nginx wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${BENCH_CACHE:-$HOME/.cache/hermes-api-bench}
export BENCH_CACHE=$cache

missing=()
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "installing ${missing[*]} (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# hermes-api itself, in the project's venv (the one the README's commands make).
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c 'import hermes_api, aiohttp, httpx, yaml' 2>/dev/null || .venv/bin/pip install -q -e .
.venv/bin/pip install -q -r bench/requirements.txt
# The agent part runs Hermes itself (hermes-agent, the `agent` extra), both sides.
if [ "${1:-}" = agent ] && ! .venv/bin/python -c 'import run_agent' 2>/dev/null; then
  .venv/bin/pip install -q -e '.[agent]'
fi

# The peer of the gateway part: LiteLLM proxy 1.106.2 in its own venv (newer ones do
# not resolve here); the other parts do without it.
needs_litellm=true
case "${1:-all}" in scale|streams|agent|report|clients) needs_litellm=false ;; esac
if $needs_litellm && [ ! -x "$cache/litellm-venv/bin/litellm" ]; then
  echo "installing litellm[proxy]==1.106.2 into $cache/litellm-venv (a few minutes, once)"
  mkdir -p "$cache"
  python3 -m venv "$cache/litellm-venv"
  "$cache/litellm-venv/bin/pip" install -q 'litellm[proxy]==1.106.2'
fi

# The second peer: Portkey's open-source gateway under Node (Debian's nodejs and npm),
# with @hono/node-server held at 1.13.8: later ones hand Portkey's stream path the
# upstream's immutable headers (Portkey-AI/gateway issue 1389), and every stream fails.
command -v node >/dev/null && command -v npm >/dev/null || missing_node=1
if [ -n "${missing_node:-}" ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
fi
portkey=$cache/portkey
if [ ! -f "$portkey/node_modules/@portkey-ai/gateway/build/start-server.js" ]; then
  echo "installing @portkey-ai/gateway@1.15.2 into $portkey (npm, once)"
  mkdir -p "$portkey"
  cat > "$portkey/package.json" <<'JSON'
{"private": true, "dependencies": {"@portkey-ai/gateway": "1.15.2"},
 "overrides": {"@hono/node-server": "1.13.8"}}
JSON
  (cd "$portkey" && npm install --no-audit --no-fund --omit=dev --silent)
fi

# The PostgreSQL store's figures (ops part): Debian's postgresql and the driver.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || {
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
}
.venv/bin/python -c 'import psycopg, psycopg_pool' 2>/dev/null || .venv/bin/pip install -q -e '.[postgres]'

exec .venv/bin/python -m bench "$@"
