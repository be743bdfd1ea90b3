#!/usr/bin/env bash
# Installs what fallwatch's tests, benchmarks and demo need from Debian's packages when it is
# missing: Mosquitto (+ its C clients, used by the broker benchmark), InfluxDB 1.x,
# Chromium + ChromeDriver for the staff-page browser test, and libfaketime (the chaos suite
# steps one hub's wall clock with it: docs/chaos.md, clock_jump).
# They are only installed here, never started as system services: every test run starts its
# own private instances on free loopback ports (fallwatch/testing/services.py).
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || need+=(libfaketime)
# the carer's web page is tested in a real headless Chromium (FALLWATCH_NO_BROWSER=1 skips it)
if [ "${FALLWATCH_NO_BROWSER:-0}" != 1 ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
fi
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
echo "fallwatch: installing Debian packages: ${need[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d keeps the packages' own system services from starting: we run private instances
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
