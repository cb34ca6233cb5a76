#!/usr/bin/env python3
"""Golden answers of the shipped demo model from Hugging Face transformers.

  build/venv/bin/python scripts/demo/golden.py models/demo

Takes the canary problems (models/demo/canary.json: task, size, seed, n;
the prompts come from `tandem bench accuracy`, the generator the canary
uses) and records transformers' greedy reply to each, computed in float32
on the bf16 weights, with the tokenizer and chat template loaded by
transformers (independent of Tandem's). Writes models/demo/golden.json.
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers as tf

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
model_dir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "models/demo"))
tandem = os.path.join(root, "build/bin/tandem")
canary = json.load(open(os.path.join(model_dir, "canary.json")))
tok = tf.AutoTokenizer.from_pretrained(model_dir)
model = tf.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
eos = tok.convert_tokens_to_ids("<|im_end|>")
out = []
for c in canary["tasks"]:
    with tempfile.TemporaryDirectory() as d:
        j = os.path.join(d, "p.json")
        args = [tandem, "bench", "accuracy", "--model-dir", model_dir, "--task", c["task"],
                "--n", str(canary["golden_n"]), "--seed", str(canary["seed"]), "--json", j,
                "--show", "0"] + [f"--{k}={v}" for k, v in c.items() if k in ("context", "digits")]
        subprocess.run(args, check=True)
        items = json.load(open(j))["items"]
    rec = dict(c, n=len(items), outputs=[])
    ok = 0
    for it in items:
        ids = tok.apply_chat_template([{"role": "user", "content": it["prompt"]}],
                                      add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        with torch.no_grad():
            g = model.generate(ids, max_new_tokens=len(it["answer"]) + 4, do_sample=False,
                               eos_token_id=eos, pad_token_id=eos)
        text = tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True)
        rec["outputs"].append(text)
        ok += text.strip() == it["answer"]
    rec["pass_at_1"] = ok / len(items)
    print(c["task"], rec["pass_at_1"], flush=True)
    out.append(rec)
json.dump(dict(source=f"transformers {tf.__version__}, float32 compute on the bf16 weights",
               seed=canary["seed"], tasks=out), open(os.path.join(model_dir, "golden.json"), "w"),
          indent=1)
