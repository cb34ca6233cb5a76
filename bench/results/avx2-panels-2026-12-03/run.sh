#!/bin/bash
# AVX2 panels side by side: two tandem binaries (before: the session's
# starting commit d94ad85; after: the panel kernels) alternating, both
# checkpoints, bf16 weights, f32 compute (the only mode without AVX-512).
# run.sh OUT ROUNDS BIN_BEFORE BIN_AFTER MODEL...
set -u
out=$1; rounds=$2; before=$3; after=$4; shift 4
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  for m in "$@"; do
    for v in before after; do
      bin=$before; [ $v = after ] && bin=$after
      "$bin" bench engine --model "$m" --batches 1,8,32 --prompt-len 64 --decode-steps 16 \
        > "$out/$(basename "$m")-$v-r$r.txt" 2>&1
    done
  done
done
