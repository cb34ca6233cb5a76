#!/usr/bin/env bash
# Ships a trained demo checkpoint (scripts/demo/train.py --out DIR) as
# models/demo:
#   1. copies the Hugging Face files (bf16 weights, tokenizer, chat template);
#   2. measures the model card's accuracy table in this process with
#      `tandem bench accuracy --model-dir` (fresh seeded problems, exact
#      grading, Wilson 95% interval) -> accuracy.json, accuracy.md;
#   3. writes canary.json when absent: the CI canary's problems (seed, n;
#      task sizes from $CANARY, default retrieval at 512 tokens, addition
#      of 4 digits, copy at 128 tokens) and each task's floor = the lower of the 95% interval's low end and
#      the canary problems' own Pass@1, less 0.05, rounded down to 0.05;
#   4. records transformers' greedy replies to the canary problems
#      (scripts/demo/golden.py) -> golden.json.
#
#   scripts/demo/ship.sh TRAIN_OUT_DIR [DEST=models/demo] [N=500]
set -euo pipefail
src=${1:?TRAIN_OUT_DIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
dst=${2:-$root/models/demo}
n=${3:-500}
export CANARY=${CANARY:-retrieval:--context=512 addition:--digits=4 copy:--context=128}
bin=$root/build/bin/tandem
py=$root/build/venv/bin/python
[ -x "$bin" ] || { echo "ship.sh: build first (make)" >&2; exit 1; }
[ -x "$py" ] || { echo "ship.sh: make venv first" >&2; exit 1; }
mkdir -p "$dst"
for f in config.json model.safetensors generation_config.json tokenizer.json tokenizer_config.json; do
  cp "$src/$f" "$dst/$f"
done
[ -f "$src/eval.json" ] && cp "$src/eval.json" "$dst/train_eval.json"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The card's rows: task and size flag. Seed 4242 is not the canary's.
rows="retrieval:--context=128 retrieval:--context=256 retrieval:--context=512
retrieval:--context=1024 addition:--digits=1 addition:--digits=2 addition:--digits=3
addition:--digits=4 copy:--context=20 copy:--context=24 copy:--context=32 copy:--context=128"
i=0
for r in $rows; do
  t=${r%%:*} f=${r#*:}
  "$bin" bench accuracy --model-dir "$dst" --task "$t" "$f" --n "$n" --seed 4242 \
    --concurrency 8 --show 0 --json "$tmp/row$i.json"
  i=$((i + 1))
done
if [ ! -f "$dst/canary.json" ]; then
  for r in $CANARY; do
    t=${r%%:*} f=${r#*:}
    "$bin" bench accuracy --model-dir "$dst" --task "$t" "$f" --n 40 --seed 20261201 \
      --concurrency 8 --show 0 --json "$tmp/canary-$t.json"
  done
fi
"$py" - "$dst" "$tmp" "$i" <<'PY'
import json, math, os, sys
dst, tmp, nrows = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = []
for i in range(nrows):
    r = json.load(open(os.path.join(tmp, f"row{i}.json")))
    r.pop("items")
    rows.append(r)
json.dump(rows, open(os.path.join(dst, "accuracy.json"), "w"), indent=1)
with open(os.path.join(dst, "accuracy.md"), "w") as f:
    f.write("| task | size | prompt tokens (mean) | n | Pass@1 | 95% CI |\n|---|---:|---:|---:|---:|---|\n")
    for r in rows:
        size = f"{r['size']} digits" if r["task"] == "addition" else \
            f"{r['size']} {'records' if r['task'] == 'retrieval' else 'words'}"
        f.write(f"| {r['task']} | {size} | {r['prompt_tokens_mean']:.0f} | {r['n']} | "
                f"{r['pass_at_1']:.3f} | {r['ci95_low']:.3f}-{r['ci95_high']:.3f} |\n")
print(open(os.path.join(dst, "accuracy.md")).read())
cpath = os.path.join(dst, "canary.json")
if not os.path.exists(cpath):
    want = {}
    for r in os.environ["CANARY"].split():
        t, f = r.split(":--")
        k, v = f.split("=")
        want[t] = (k, int(v))
    tasks = []
    for t, (k, v) in want.items():
        own = json.load(open(os.path.join(tmp, f"canary-{t}.json")))["pass_at_1"]
        low = min(r["ci95_low"] for r in rows if r["task"] == t and
                  (r["size"] == v if k == "digits" else r["context"] == v))
        floor = max(0.0, math.floor((min(low, own) - 0.05) * 20) / 20)
        tasks.append({"task": t, k: v, "floor": round(floor, 2)})
    json.dump(dict(seed=20261201, n=40, golden_n=40, tasks=tasks), open(cpath, "w"), indent=1)
    print("wrote", cpath, json.dumps(tasks))
PY
"$py" "$root/scripts/demo/golden.py" "$dst"
du -sh "$dst"
