#!/usr/bin/env bash
# `make run`: start the local cluster (router + workers) at 127.0.0.1:8000
# and print a ready-to-paste curl. Usage: run-local.sh BIN
#
# Serves models/demo (the trained demo model, see its README.md); a checkout
# without it (e.g. a sparse one) falls back to the tiny Qwen3-MoE test
# checkpoint (random weights: the text is noise, the cluster is real) and
# says so. TANDEM_MODEL picks any other model folder.
set -u
bin=${1:-build/bin/tandem}
root=$(cd "$(dirname "$0")/.." && pwd)
model=${TANDEM_MODEL:-}
if [ -z "$model" ]; then
  if [ -f "$root/models/demo/config.json" ]; then
    model=$root/models/demo
  else
    model=$root/tests/fixtures/models/qwen3moe
    echo "make run: models/demo is missing from this checkout; serving the tiny random-weight" \
         "test model $model (its text is noise)."
  fi
fi
port=${TANDEM_PORT:-8000}
# One prefill and one decode worker: KV crosses between processes over UCX.
"$bin" up --model "$model" --port "$port" --prefill 1 --decode 1
rc=$?
if [ "$rc" -eq 69 ]; then
  echo "make run: the local cluster is not available in this build (see docs/STATUS.md)."
  exit 0
fi
exit "$rc"
