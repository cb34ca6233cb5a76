#!/bin/sh
# Session 12: decode batch 1 against copy and read-only bandwidth on this
# session's VM (AMD EPYC, Zen 4), 5 runs per shape one after the other.
set -e
O=bench/results/engine-cpu-decode-bw-2026-12-02
for r in 1 2 3 4 5; do
  TANDEM_THREADS=2 build/bin/tandem bench engine --model build/bench-models/qwen3-0.6b \
    --batches 1 --prompt-len 16 --decode-steps 64 > $O/dense-$r.txt 2>&1
  TANDEM_THREADS=2 build/bin/tandem bench engine --model build/bench-models/qwen3moe-a3b-2l \
    --batches 1 --prompt-len 16 --decode-steps 64 > $O/moe-$r.txt 2>&1
done
