#!/bin/bash
# Decode batch 1 against the copy and read probes (best of 4 trials each,
# run before each of 5 rounds), both precisions, both bench models.
set -u
out=$1
for m in build/bench-models/qwen3-0.6b build/bench-models/qwen3moe-a3b-2l; do
  for p in f32 bf16; do
    TANDEM_CPU_PRECISION=$p build/bin/tandem bench engine --model "$m" --batches 1 \
      --prompt-len 16 --decode-steps 32 --rounds 5 > "$out/$(basename "$m")-$p.txt" 2>&1
  done
done
