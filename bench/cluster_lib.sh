# bench/cluster_lib.sh - sourced by the bench scripts that run a local
# cluster (pd_experiment.sh, kv_stream.sh, guidellm_check.sh). Expects
# $bin (the tandem binary), $model, $name (served model name), $http and
# $cp (ports) to be set; every process started goes into $pids, and
# `stop` (also run at exit) terminates and reaps them.
pids=()

stop() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap stop EXIT

start_router() {
  "$bin" router --listen=127.0.0.1:$http --grpc-listen=off --cp-bind=tcp://127.0.0.1:$cp \
    --model="$model" --served-model-name="$name" --log-level=warn &
  pids+=($!)
}

# Waits up to 120 s for the router's /ready (workers registered).
wait_ready() {
  for _ in $(seq 600); do
    curl -sf http://127.0.0.1:$http/ready >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}
