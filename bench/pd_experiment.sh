#!/usr/bin/env bash
# Disaggregated vs colocated under a mixed workload (issue 7, experiment).
#
#   bench/pd_experiment.sh MODEL_DIR OUT_DIR [long_prompt_words] [burst_rate] [duration]
#
# Both modes get the same two cores:
#   colocated      one `tandem worker` on cores 0-1, TANDEM_THREADS=2
#   disaggregated  `tandem prefill` on core 0 and `tandem decode` on core 1,
#                  TANDEM_THREADS=1 each, KV over UCX (shared memory)
# The router and the load generators are not pinned (they are light).
# Two load streams run at once against each mode:
#   decode  closed loop, 4 clients, short prompts (32 words), 128 output
#           tokens each: the TPOT we care about
#   burst   open loop, Poisson at burst_rate req/s, long prompts
#           (long_prompt_words), 1 output token: prefill pressure
# Each mode first runs the decode stream alone (baseline), then both
# streams together. Pick a burst rate below one core's prefill capacity, or
# the prefill queue grows without bound and TTFT measures the queue.
# Writes OUT_DIR/{colocated,disagg}-{baseline,decode,burst}.{json,csv,requests.csv},
# compare-*.txt, summary.md (bench/pd_summary.py) and charts/.
set -eu
model=$(cd "$1" && pwd)
out=$2
long=${3:-768}
rate=${4:-0.5}
dur=${5:-60s}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/build/bin/tandem
name=$(basename "$model")
mkdir -p "$out"
http=18300
cp=18301
. "$root/bench/cluster_lib.sh"

run_mode() {
  local mode=$1
  start_router
  local w=(--router=tcp://127.0.0.1:$cp --model="$model" --served-model-name="$name"
           --kv-pool-size=512M --log-level=warn)
  if [ "$mode" = colocated ]; then
    TANDEM_THREADS=2 taskset -c 0,1 "$bin" worker "${w[@]}" --worker-id=w0 &
    pids+=($!)
  else
    TANDEM_THREADS=1 UCX_TLS=shm,self taskset -c 0 "$bin" prefill "${w[@]}" --worker-id=p0 &
    pids+=($!)
    TANDEM_THREADS=1 UCX_TLS=shm,self taskset -c 1 "$bin" decode "${w[@]}" --worker-id=d0 &
    pids+=($!)
  fi
  wait_ready
  sleep 2
  local common=(--url http://127.0.0.1:$http --model "$name" --workload fixed --ignore-eos
                --duration "$dur" --timeout 600s)
  # Baseline: the decode stream alone, same length.
  "$bin" bench serve "${common[@]}" --input-len 32 --output-len 128 --concurrency 4 \
    --warmup 2 --out "$out/$mode-baseline" > "$out/$mode-baseline.log" 2>&1
  "$bin" bench serve "${common[@]}" --input-len 32 --output-len 128 --concurrency 4 \
    --warmup 0 --out "$out/$mode-decode" > "$out/$mode-decode.log" 2>&1 &
  local dpid=$!
  sleep 3 # the decode stream is running before the bursts start
  "$bin" bench serve "${common[@]}" --input-len "$long" --output-len 1 --concurrency '' \
    --rate "$rate" --warmup 0 --seed 7 --out "$out/$mode-burst" > "$out/$mode-burst.log" 2>&1
  wait $dpid
  stop
  sleep 1
}

run_mode colocated
run_mode disagg
"$bin" bench compare "$out/colocated-decode.json" "$out/disagg-decode.json" \
  --label-a colocated --label-b disaggregated > "$out/compare-decode.txt"
"$bin" bench compare "$out/colocated-burst.json" "$out/disagg-burst.json" \
  --label-a colocated --label-b disaggregated > "$out/compare-burst.txt"
"$bin" bench compare "$out/colocated-baseline.json" "$out/disagg-baseline.json" \
  --label-a colocated --label-b disaggregated > "$out/compare-baseline.txt"
py=$root/build/venv/bin/python
[ -x "$py" ] || py=python3
"$py" "$root/bench/plot.py" --out "$out/charts" \
  --labels colocated-alone,colocated-bursts,disagg-alone,disagg-bursts \
  "$out/colocated-baseline.json" "$out/colocated-decode.json" \
  "$out/disagg-baseline.json" "$out/disagg-decode.json" || true
"$py" "$root/bench/pd_summary.py" "$out" > "$out/summary.md"
cat "$out/summary.md"
echo "results in $out"
