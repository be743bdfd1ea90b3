#!/usr/bin/env bash
# One command from a fresh clone to the whole test suite: installs Debian's mosquitto and
# influxdb when missing, the Python package with its dev extras, checks style, then runs
# pytest. The tests start (and stop) their own Mosquitto and InfluxDB on free loopback ports
# with temporary data directories. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-services.sh
bash scripts/venv.sh dev
.venv/bin/ruff check .
.venv/bin/lint-imports            # layers only point down (pyproject.toml [tool.importlinter])
.venv/bin/mypy                    # types (pyproject.toml [tool.mypy]; strict for protocol and config)
# Parallel: most tests wait on brokers, databases and subprocesses rather than compute, so twice
# as many workers as cores keeps the cores busy. Whole modules go to one worker (loadfile), so a
# module's Mosquitto is started once, and in collection order (no reorder), which
# tests/conftest.py makes longest-first. FALLWATCH_TEST_WORKERS=0 runs everything in one process.
workers=${FALLWATCH_TEST_WORKERS:-$(( $(nproc) * 2 ))}
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
