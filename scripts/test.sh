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
# The tests' temporary files (brokers' persistence, InfluxDB's WAL, SQLite state, spools) on
# tmpfs where there is one: the generated broker config saves its whole store after every
# message, which on a shared disk made one test take minutes. A killed process loses nothing
# on tmpfs either, which is all the crash tests need.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  TMPDIR=$(mktemp -d /dev/shm/fallwatch-tests.XXXXXX)
  chmod 755 "$TMPDIR"  # traversable like /tmp, for a service that drops to its own user
  export TMPDIR
  trap 'rm -rf "$TMPDIR"' EXIT
fi
.venv/bin/python -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
