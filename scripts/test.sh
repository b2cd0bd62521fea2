#!/usr/bin/env bash
# The test command: installs what the suite needs (Debian's Chromium for the browser tests, a C compiler and Python's
# headers for the fast step's C extension, the package with its test extras, torch pinned to the CPU build), then
# runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
DEBS=()
[ -x "${BIDVIZ_CHROMIUM:-/usr/bin/chromium}" ] || DEBS+=(chromium)
command -v cc >/dev/null || DEBS+=(gcc)
# the tests check the C fast step was built: it needs Python.h (pyenv and python.org builds ship it; Debian's python3
# takes it from python3-dev)
"$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || DEBS+=(python3-dev)
if [ ${#DEBS[@]} -gt 0 ]; then
  echo "installing ${DEBS[*]} (apt-get) for the browser tests and the C fast step" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${DEBS[@]}" >/dev/null
fi

"$PY" -m pip install -q -c constraints.txt -e ".[test]"
exec "$PY" -m pytest -q "$@"
