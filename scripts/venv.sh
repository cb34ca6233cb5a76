#!/usr/bin/env bash
# Creates (or updates) the Python venv under build/venv used by fixture
# generators and reference checks. Usage: scripts/venv.sh [requirements.txt]
# Prints the venv's python path on success.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
req=${1:-$root/scripts/requirements-dev.txt}
venv=${TANDEM_VENV:-$root/build/venv}
stamp=$venv/.stamp-$(basename "$req")-$(sha1sum "$req" | cut -c1-12)
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || { echo "venv.sh: python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
fi
if [ ! -f "$stamp" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
