#!/usr/bin/env bash
# Trains several demo-model recipes side by side on one GPU and keeps the
# best two (by retrieval@512 + 4-digit addition Pass@1).
#
#   scripts/demo/sweep.sh OUTDIR SECONDS [PYTHON]
#
# Each recipe is a plain scripts/demo/train.py command line (printed in its
# log), so the winner can be rerun alone, on a GPU or on CPU.
set -uo pipefail
out=${1:?OUTDIR}; secs=${2:?SECONDS}; py=${3:-python3}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
common="--device cuda --steps 1000000 --time-limit $secs --eval-every 0 --eval-n ${SWEEP_EVAL_N:-40} --threads 2"
declare -A R=(
  [q4qk]="--arch qwen3moe --layers 4 --hidden 256 --moe-ff 256 --lr 1e-3 --qk-norm-init 4 --budget 8192"
  [q4]="--arch qwen3moe --layers 4 --hidden 256 --moe-ff 256 --lr 1e-3 --budget 8192"
  [m4]="--arch mixtral --layers 4 --hidden 256 --moe-ff 256 --lr 1e-3 --budget 8192"
  [m4b]="--arch mixtral --layers 4 --hidden 256 --moe-ff 256 --lr 1e-3 --budget 16384"
  [m2]="--arch mixtral --layers 2 --hidden 256 --moe-ff 256 --lr 2e-3 --budget 8192"
  [q2qk]="--arch qwen3moe --layers 2 --hidden 256 --moe-ff 256 --lr 2e-3 --qk-norm-init 4 --budget 8192"
  [m4lr]="--arch mixtral --layers 4 --hidden 256 --moe-ff 256 --lr 3e-3 --budget 8192"
  [q4qk8]="--arch qwen3moe --layers 4 --hidden 256 --moe-ff 256 --lr 2e-3 --qk-norm-init 8 --budget 8192"
  [m2h]="--arch mixtral --layers 2 --hidden 256 --heads 8 --kv-heads 4 --head-dim 32 --moe-ff 256 --lr 2e-3 --budget 16384"
)
names=${SWEEP_ONLY:-${!R[@]}}  # SWEEP_ONLY="m2h m4" runs those alone
for name in $names; do
  mkdir -p "$out/$name"
  echo "$py scripts/demo/train.py $common ${R[$name]} --out $out/$name" > "$out/$name/cmd.txt"
  PYTHONUNBUFFERED=1 $py "$here/train.py" $common ${R[$name]} --out "$out/$name" \
    > "$out/$name/stdout.txt" 2>&1 &
done
wait
$py - "$out" <<'PY'
import json, os, sys, tarfile
out = sys.argv[1]
rows = []
for name in sorted(os.listdir(out)):
    p = os.path.join(out, name, "eval.json")
    if os.path.isfile(p):
        acc = json.load(open(p))["pass_at_1"]
        rows.append((acc["retrieval@512"] + acc["addition-4digit"], name, acc))
    else:
        print(name, "failed:", open(os.path.join(out, name, "stdout.txt")).read()[-600:])
rows.sort(reverse=True)
for s, name, acc in rows:
    print(f"{name:8s} {s:.3f} {acc}")
with tarfile.open(os.path.join(out, "sweep-logs.tar.gz"), "w:gz") as t:
    for name in os.listdir(out):
        d = os.path.join(out, name)
        if os.path.isdir(d):
            for f in ("cmd.txt", "stdout.txt", "train_log.jsonl", "eval.json"):
                if os.path.exists(os.path.join(d, f)):
                    t.add(os.path.join(d, f), arcname=f"{name}/{f}")
for _, name, _ in rows[:2]:
    with tarfile.open(os.path.join(out, f"model-{name}.tar.gz"), "w:gz") as t:
        t.add(os.path.join(out, name), arcname=name)
PY
