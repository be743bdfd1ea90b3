#!/usr/bin/env bash
# One command from a fresh clone to a running demo: install, then run a simulated home
# through sim -> edge -> MQTT -> gateway -> store. Extra arguments go to `fallwatch demo`
# (e.g. --json, --residents 5, --mqtt-url mqtt://host:1883 --influx-url http://host:8086);
# --serve keeps a simulated care home running with the staff console until Ctrl-C (docs/demo.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh "" >&2
exec .venv/bin/fallwatch demo "$@"
