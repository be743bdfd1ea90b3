#!/usr/bin/env bash
# Creates (once) the project's virtual environment in .venv and installs fallwatch into it.
# Usage: source scripts/venv.sh [extras]   e.g. "dev"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
extras=${1:-}
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
.venv/bin/python -m pip install -q -e "$spec"
