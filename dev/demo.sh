#!/usr/bin/env bash
# Demonstrate a migration end to end on this machine: start a local
# MongoDB-wire server, fill an "old" database with sample metrics, export it,
# preview the import into a "new" database, run it, record a new job and
# analyse the result.  Everything it creates is removed when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
secantusd-py --host 127.0.0.1 --port "$port" --storage-path :memory: >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
export MONGODB_URI="mongodb://127.0.0.1:$port"
backup="$work/old_server_metrics.json"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step python3 dev/seed_demo.py --db old_server --jobs 2000
step python3 export_metrics.py --db old_server --output "$backup" --pretty
step python3 import_metrics.py --db new_server --input "$backup" --dry-run
step python3 import_metrics.py --db new_server --input "$backup" --backup-dir "$work"
step python3 labeled.py record --db new_server --network resnet50 --action train \
    --version 5.3.0 --gpu "NVIDIA A100" --gpu "NVIDIA A100" --time-lapsed 3600 --success
step python3 convert_to_labeled.py --analyze --db new_server
