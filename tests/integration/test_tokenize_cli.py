#!/usr/bin/env python3
# tt-timeout: 180
"""`tandem tokenize` against the HF `tokenizers` goldens (Qwen3 tokenizer
from ../shared): stdin text -> the golden ids; --decode of the ids -> the
golden text; bad input -> exit 2 with a one-line reason."""
import json
import os
import subprocess
import sys

tandem = os.environ["TANDEM_BIN"]
root = os.environ["TANDEM_ROOT"]
model = os.path.join(root, "..", "shared", "tokenizers", "qwen3")
if not os.path.exists(os.path.join(model, "tokenizer.json")):
    print("../shared/tokenizers/qwen3 is not beside the checkout")
    sys.exit(77)
gold = json.load(open(os.path.join(root, "tests/fixtures/tok/goldens.json"), encoding="utf-8"))
fails = 0
for e in gold["qwen3"]["strings"][:200:10]:  # every 10th: loading the 11 MB file dominates
    out = subprocess.run([tandem, "tokenize", f"--model={model}"], input=e["text"].encode(),
                         capture_output=True, timeout=30)
    if out.returncode != 0 or json.loads(out.stdout) != e["ids"]:
        print("encode differs:", repr(e["text"][:60]), out.stderr[:200])
        fails += 1
        continue
    dec = subprocess.run([tandem, "tokenize", f"--model={model}", "--decode"],
                         input=json.dumps(e["ids"]).encode(), capture_output=True, timeout=30)
    if dec.returncode != 0 or dec.stdout.decode("utf-8") != e["decoded"]:
        print("decode differs:", repr(e["text"][:60]))
        fails += 1
bad = subprocess.run([tandem, "tokenize", f"--model={model}", "--decode"], input=b"[1, \"x\"]",
                     capture_output=True, timeout=30)
if bad.returncode != 2 or b"JSON array of token ids" not in bad.stderr or \
        bad.stderr.count(b"\n") != 1:
    print("bad input:", bad.returncode, bad.stderr)
    fails += 1
big = subprocess.run([tandem, "tokenize", f"--model={model}", "--decode"], input=b"[999999999]",
                     capture_output=True, timeout=30)
if big.returncode != 2 or b"outside the vocabulary" not in big.stderr:
    print("out of range:", big.returncode, big.stderr)
    fails += 1
print(f"{fails} failures")
sys.exit(1 if fails else 0)
