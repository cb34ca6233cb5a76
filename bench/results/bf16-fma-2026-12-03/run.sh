#!/bin/bash
# bf16 mode (TANDEM_CPU_PRECISION=bf16), batches on VDPBF16PS (TANDEM_CPU_BF16_FMA=0)
# against the same products as f32 FMAs (=1), one binary, alternating.
# run.sh OUT ROUNDS MODEL...
set -u
out=$1; rounds=$2; shift 2
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  for m in "$@"; do
    for f in 0 1; do
      TANDEM_CPU_PRECISION=bf16 TANDEM_CPU_BF16_FMA=$f build/bin/tandem bench engine --model "$m" \
        --batches 1,8,32,64 --prompt-len 128 --decode-steps 16 \
        > "$out/$(basename "$m")-fma$f-r$r.txt" 2>&1
    done
  done
done
