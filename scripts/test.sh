#!/usr/bin/env bash
# The test command: installs what the suite needs (Debian's Chromium for the browser tests, the package with its
# test extras, torch pinned to the CPU build), then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

if [ ! -x "${BIDVIZ_CHROMIUM:-/usr/bin/chromium}" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian's chromium for the browser tests (apt-get)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

"$PY" -m pip install -q -c constraints.txt -e ".[test]"
exec "$PY" -m pytest -q "$@"
