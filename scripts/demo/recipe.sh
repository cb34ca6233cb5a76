#!/usr/bin/env bash
# Trains the shipped demo model (models/demo) from scratch: five seeded
# stages of scripts/demo/train.py, each starting from the previous one's
# weights. Step counts are fixed (not time limits) so the run replays; on
# this project's 2-core VM it takes about 95 minutes. Why the stages and the
# fixed-offset heads: bench/results/demo-sweep-2026-11-30.md, "Session 8"
# and "Session 9".
#
#   scripts/demo/recipe.sh OUT_DIR [THREADS=2]
#   scripts/demo/ship.sh OUT_DIR/s5          # then: card table, canary, goldens
set -euo pipefail
out=${1:?OUT_DIR}
threads=${2:-2}
root=$(cd "$(dirname "$0")/../.." && pwd)
py=$("$root/scripts/venv.sh")
train() { "$py" "$root/scripts/demo/train.py" --arch mixtral --budget 2048 --threads "$threads" \
  --warm-copy 0 --addition0 4 --addition-fixed --addition-pad --time-limit 0 --eval-every 0 "$@"; }
mkdir -p "$out"
# 1. Two layers, hidden 256, 8 heads of 64 (4 KV heads), 8 experts of 256,
#    top-2. Layers 0/1 head 0 start as an induction head (retrieval, copy);
#    layer 0's heads 1-7 and layer 1's head 2 start as fixed-offset heads
#    (the operand digits of each column of a padded 4-digit sum).
[ -f "$out/s1/eval.json" ] || train --out "$out/s1" --layers 2 --hidden 256 --heads 8 \
  --kv-heads 4 --moe-ff 256 --lr 5e-4 --tasks retrieval,addition,retrieval,addition,copy \
  --retrieval0 16 --induction-init --addition-init 15,10,14,9,13,8,12,7 --steps 2286 --eval-n 10
# 2-5. Lower learning rates; the retrieval curriculum (which stalls below
#    30 records while addition is being learned) restarts higher each time.
[ -f "$out/s2/eval.json" ] || train --out "$out/s2" --init-from "$out/s1" --lr 3e-4 \
  --tasks retrieval,retrieval,addition,copy --retrieval0 16 --steps 783 --eval-n 10
[ -f "$out/s3/eval.json" ] || train --out "$out/s3" --init-from "$out/s2" --lr 2e-4 \
  --tasks retrieval,retrieval,addition,copy --retrieval0 128 --steps 980 --eval-n 10
[ -f "$out/s4/eval.json" ] || train --out "$out/s4" --init-from "$out/s3" --lr 1e-4 \
  --tasks retrieval,retrieval,addition,copy --retrieval0 481 --steps 900 --eval-n 10
[ -f "$out/s5/eval.json" ] || train --out "$out/s5" --init-from "$out/s4" --lr 1e-4 \
  --tasks retrieval,retrieval,addition,copy --retrieval0 500 --steps 1500 --eval-n 40
