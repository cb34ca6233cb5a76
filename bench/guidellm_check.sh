#!/usr/bin/env bash
# Reference check of `tandem bench serve` against GuideLLM (issue 7).
#
#   bench/guidellm_check.sh MODEL_DIR OUT_DIR [concurrency] [prompt_tokens] [output_tokens] [requests]
#
# Starts a colocated cluster (router + one worker) on MODEL_DIR, then runs the
# same closed-loop workload three times against it: tandem bench serve,
# GuideLLM (build/venv-guidellm, from PyPI), tandem bench serve again (the
# two tandem runs bracket the GuideLLM one, so drift of the server shows).
# Each run has its own prompts (different seeds): a repeated prompt would hit
# the prefix cache and shrink TTFT (the first run of this script made that
# mistake, see bench/results/guidellm-2026-11-22/README.md).
# Both tools send /v1/completions, stream, ignore_eos and max_tokens fixed, so
# every request produces exactly output_tokens tokens. Writes OUT_DIR/
# tandem-a.json, guidellm.json, tandem-b.json and crosscheck.md (the
# comparison table, from bench/guidellm_compare.py).
#
# Install GuideLLM once: python3 -m venv build/venv-guidellm &&
#   build/venv-guidellm/bin/pip install guidellm==0.8.1
set -eu
model=$(cd "$1" && pwd)
out=$2
conc=${3:-4}
ptok=${4:-128}
otok=${5:-64}
nreq=${6:-200}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/build/bin/tandem
gl=$root/build/venv-guidellm/bin/guidellm
name=$(basename "$model")
http=18400
cp=18401
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -x "$gl" ] || { echo "guidellm_check: $gl missing (see the header of this script)" >&2; exit 2; }
. "$root/bench/cluster_lib.sh"
start_router
"$bin" worker --router=tcp://127.0.0.1:$cp --model="$model" --served-model-name="$name" \
  --kv-pool-size=512M --log-level=warn --worker-id=w0 &
pids+=($!)
wait_ready

tandem_run() {
  "$bin" bench serve --url http://127.0.0.1:$http --model "$name" --workload fixed \
    --input-len "$ptok" --output-len "$otok" --ignore-eos --concurrency "$conc" \
    --num-requests "$nreq" --duration 3600s --timeout 600s --warmup 4 --seed "$2" --out "$out/$1" \
    > "$out/$1.log" 2>&1
}

tandem_run tandem-a 101
cat > "$out/guidellm-scenario.json" <<EOF
{
  "metadata": {"name": "tandem-crosscheck"},
  "spec": {
    "backend": {"kind": "openai_http", "target": "http://127.0.0.1:$http",
                "model": "$name", "request_format": "/v1/completions"},
    "profile": {"kind": "concurrent", "streams": $conc},
    "data": [{"kind": "synthetic_text", "prompt_tokens": $ptok, "output_tokens": $otok}],
    "tokenizer": {"kind": "huggingface_auto", "model": "$model"},
    "constraints": [{"kind": "max_requests", "count": $nreq}],
    "outputs": [{"kind": "json", "path": "$out/guidellm.json"}]
  }
}
EOF
(cd "$out" && HF_HUB_OFFLINE=1 "$gl" run --scenario "$out/guidellm-scenario.json" \
   --disable-console-interactive > "$out/guidellm.log" 2>&1)
tandem_run tandem-b 202

py=$root/build/venv/bin/python
[ -x "$py" ] || py=python3
"$py" "$root/bench/guidellm_compare.py" "$out/tandem-a.json" "$out/guidellm.json" \
  "$out/tandem-b.json" | tee "$out/crosscheck.md"
