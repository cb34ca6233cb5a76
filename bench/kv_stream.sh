#!/usr/bin/env bash
# KV layer streaming (issue 4): `tandem prefill --kv-stream=layer` (each
# layer's blocks are posted as soon as the prompt's last chunk wrote them)
# vs `--kv-stream=off` (all layers after the forward pass), side by side in
# one run, over each UCX transport.
#
#   bench/kv_stream.sh MODEL_DIR OUT_DIR [prompt_words] [requests] [rounds]
#
# A router, 1 prefill and 1 decode worker (TANDEM_THREADS=1 each, so a
# core is left for the prefill's libuv thread that posts the puts, as a NIC
# would be), sequential requests of prompt_words words and 4 output tokens.
# Modes alternate (off, layer, off, layer, ...) so drift hits both. Per
# run it records from `tandem bench serve` TTFT and from the router's
# /metrics the two KV timers (means over the run's requests):
#   kv_wait      prompt forward pass ended -> all KV landed (what streaming
#                shortens: only the layers not shipped yet remain)
#   kv_transfer  first put posted -> all KV landed
# Writes OUT_DIR/<tls>-<mode>-<round>.{json,csv,requests.csv,metrics,log}
# and OUT_DIR/summary.md.
set -eu
model=$(cd "$1" && pwd)
out=$2
words=${3:-512}
nreq=${4:-8}
rounds=${5:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/build/bin/tandem
name=$(basename "$model")
mkdir -p "$out"
http=18320
cp=18321
. "$root/bench/cluster_lib.sh"

metric() { # FILE NAME -> value (0 when absent)
  awk -v n="$2" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }' "$1"
}

run() { # TLS MODE ROUND
  local tls=$1 mode=$2 r=$3 tag=$1-$2-$3
  start_router
  local w=(--router=tcp://127.0.0.1:$cp --model="$model" --served-model-name="$name"
           --kv-pool-size=1G --max-batch-tokens=1024 --log-level=warn)
  TANDEM_THREADS=1 UCX_TLS=$tls,self "$bin" prefill "${w[@]}" --worker-id=p0 \
    --kv-stream="$mode" &
  pids+=($!)
  TANDEM_THREADS=1 UCX_TLS=$tls,self "$bin" decode "${w[@]}" --worker-id=d0 &
  pids+=($!)
  wait_ready
  sleep 1
  "$bin" bench serve --url http://127.0.0.1:$http --model "$name" --workload fixed \
    --input-len "$words" --output-len 4 --ignore-eos --concurrency 1 --num-requests "$nreq" \
    --duration 3600s --timeout 600s --warmup 1 --seed "$r" --out "$out/$tag" \
    > "$out/$tag.log" 2>&1
  sleep 1.5 # one more heartbeat carries the last counters
  curl -sf http://127.0.0.1:$http/metrics > "$out/$tag.metrics"
  stop
  sleep 1
  local ws wc ts
  ws=$(metric "$out/$tag.metrics" tandem_kv_wait_seconds_sum)
  wc=$(metric "$out/$tag.metrics" tandem_kv_wait_seconds_count)
  ts=$(metric "$out/$tag.metrics" tandem_kv_transfer_seconds_sum)
  python3 - "$out/$tag.json" "$tls" "$mode" "$r" "$ws" "$wc" "$ts" >> "$out/rows.tsv" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
p = j["points"][0] if "points" in j else j
t = p["ttft_ms"]
ws, wc, ts = float(sys.argv[5]), max(1, int(float(sys.argv[6]))), float(sys.argv[7])
f = lambda v: "-" if v is None else f"{v:.1f}"  # no TTFT when no text streamed
print("\t".join([sys.argv[2], sys.argv[3], sys.argv[4], f(t.get("mean")), f(t.get("p50")),
                 f"{1000 * ws / wc:.2f}", f"{1000 * ts / wc:.2f}", str(wc)]))
PY
}

: > "$out/rows.tsv"
for tls in tcp shm; do
  for r in $(seq "$rounds"); do
    run "$tls" off "$r"
    run "$tls" layer "$r"
  done
done

{
  echo "# KV layer streaming: --kv-stream=layer vs off"
  echo
  echo "Model \`$name\`, $words-word prompts, $nreq sequential requests per run (+1 warm-up),"
  echo "1 prefill + 1 decode worker (1 compute thread each). \`$(uname -n)\`, $(nproc) cores,"
  echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')."
  echo
  echo "| transport | kv-stream | round | TTFT mean ms | TTFT p50 ms | kv_wait mean ms | kv_transfer mean ms | transfers |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8 }' \
    "$out/rows.tsv"
} > "$out/summary.md"
cat "$out/summary.md"
