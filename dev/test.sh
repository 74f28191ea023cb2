#!/usr/bin/env bash
# Install what the tests need, then lint and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
    else
        echo "prometheus and promtool are missing: sudo apt-get install prometheus" >&2
    fi
fi
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

ruff check .
ruff format --check .
mypy
python3 -m pytest "$@"
