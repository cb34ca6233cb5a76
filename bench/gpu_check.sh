#!/usr/bin/env bash
# GPU checks and timings in one go, for a lent GPU machine that has CUDA,
# PyTorch and transformers but none of our Debian libraries. Build here
# with `make CUDA=1`, download the runtime .debs into .devrt/ (see
# ../shared/notes/PITFALLS.md, CUDA), carry build/bin and .devrt, then:
#
#   bench/gpu_check.sh OUTDIR [tests] [bench] [sweep SECONDS]
#
#   tests  the engine tests (cuda ones included) and a cuda `tandem generate`
#   bench  random Qwen3-8B-shaped (4 layers) and Qwen3-30B-A3B-shaped
#          (2 layers) checkpoints: `tandem bench engine --backend cuda`, then
#          transformers on the same GPU (bench/hf_engine_bench.py)
#   sweep  demo-model training recipes side by side (scripts/demo/sweep.sh)
#          in the background while the rest runs (its GPU use disturbs the
#          timings: never combine sweep with bench for reported numbers)
set -uo pipefail
out=${1:?OUTDIR}; shift
mkdir -p "$out" /tmp/rt
for f in .devrt/*.deb; do dpkg -x "$f" /tmp/rt; done
cublas=$(python3 -c 'import nvidia.cublas, os; print(os.path.dirname(nvidia.cublas.__file__) + "/lib")' 2>/dev/null)
export LD_LIBRARY_PATH=/tmp/rt/usr/lib/x86_64-linux-gnu:/tmp/rt/lib/x86_64-linux-gnu:/usr/local/cuda/lib64:${cublas}:${LD_LIBRARY_PATH:-}
nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
ldd build/bin/tandem | grep "not found"
sweep_pid=
while [ $# -gt 0 ]; do
  case $1 in
  sweep)
    secs=$2; shift
    (scripts/demo/sweep.sh /tmp/sweep "$secs" python3 > "$out/sweep.txt" 2>&1
     cp /tmp/sweep/*.tar.gz "$out/" 2>/dev/null) &
    sweep_pid=$! ;;
  tests)
    build/bin/tandem-tests -j 1 -f engine. -v --timeout 300 > "$out/cuda-tests.txt" 2>&1
    tail -n 20 "$out/cuda-tests.txt"
    build/bin/tandem generate --model tests/fixtures/models/qwen3moe --backend cuda \
      --prompt "Hello there" --max-tokens 8 --json
    build/bin/tandem generate --model tests/fixtures/models/qwen3moe --backend cpu \
      --prompt "Hello there" --max-tokens 8 --json ;;
  bench)
    python3 bench/make_bench_models.py qwen3-8b-4l qwen3moe-a3b-2l > /dev/null 2>&1
    for m in qwen3-8b-4l qwen3moe-a3b-2l; do
      echo "== tandem cuda $m"
      build/bin/tandem bench engine --model build/bench-models/$m --backend cuda \
        --batches 1,8,32,64,128,256 --prompt-len 128 --decode-steps 16
      echo "== transformers $m"
      python3 bench/hf_engine_bench.py build/bench-models/$m --batches 1,8,32,64,128,256 \
        --prompt-len 128 --decode-steps 16 2>&1 | grep -v Warning
    done 2>&1 | tee "$out/bench.txt" ;;
  esac
  shift
done
[ -n "$sweep_pid" ] && wait "$sweep_pid"
cat "$out/sweep.txt" 2>/dev/null | tail -n 30
exit 0
