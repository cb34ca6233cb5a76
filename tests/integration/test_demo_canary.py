#!/usr/bin/env python3
# tt-timeout: 600
"""Accuracy canary on the shipped demo model (models/demo).

For each task in models/demo/canary.json, the same seeded problems go
through the disaggregated cluster (router + `tandem prefill` + `tandem
decode`, KV over UCX) and through the in-process engine (`tandem bench
accuracy --model-dir`). Greedy answers must be identical item by item,
Pass@1 must be at or above the model card's floor, and the in-process
replies must equal transformers' (models/demo/golden.json, computed by
scripts/demo/golden.py on the same problems). A KV bug anywhere in the
pipeline shows up here as wrong answers."""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tandem_testlib import check, finish, free_port, request, stop_procs, wait_for  # noqa: E402

tandem = os.environ["TANDEM_BIN"]
root = os.environ["TANDEM_ROOT"]
tmp = os.environ.get("TT_TMPDIR") or tempfile.mkdtemp()
model = os.path.join(root, "models", "demo")
if not os.path.exists(os.path.join(model, "canary.json")):
    # Only a checkout without models/demo (e.g. a sparse one) gets here.
    print("skipped: models/demo/canary.json absent from this checkout")
    sys.exit(77)
canary = json.load(open(os.path.join(model, "canary.json")))
golden = {t["task"]: t for t in json.load(open(os.path.join(model, "golden.json")))["tasks"]}


def size_args(c):
    return [f"--{k}={v}" for k, v in c.items() if k in ("context", "digits")]


def accuracy(c, n, where, name):
    out = os.path.join(tmp, f"{name}.json")
    r = subprocess.run([tandem, "bench", "accuracy", "--task", c["task"], "--n", str(n),
                        "--seed", str(canary["seed"]), "--json", out, "--concurrency", "8"] +
                       size_args(c) + where, capture_output=True, text=True, timeout=400)
    print(r.stdout.strip())
    if r.returncode != 0:
        print(r.stderr.strip())
        return None
    return json.load(open(out))


# Single process first: it needs no cluster and checks against transformers.
local = {}
for c in canary["tasks"]:
    res = accuracy(c, canary["n"], ["--model-dir", model], f"local-{c['task']}")
    check(f"{c['task']}: in-process run completes", res is not None)
    if res is None:
        continue
    local[c["task"]] = res
    g = golden[c["task"]]
    same = [i for i, o in enumerate(g["outputs"]) if res["items"][i]["output"] == o]
    check(f"{c['task']}: in-process replies equal transformers on {len(g['outputs'])} problems",
          len(same) == len(g["outputs"]),
          [(i, res["items"][i]["output"], o) for i, o in enumerate(g["outputs"])
           if res["items"][i]["output"] != o][:3])
    check(f"{c['task']}: in-process Pass@1 {res['pass_at_1']:.3f} >= floor {c['floor']}",
          res["pass_at_1"] >= c["floor"])

http, cp = free_port(), free_port()
env = dict(os.environ, UCX_TLS="tcp,self")
procs = [subprocess.Popen([tandem, "router", f"--listen=127.0.0.1:{http}", "--grpc-listen=off",
                           f"--cp-bind=tcp://127.0.0.1:{cp}", f"--model={model}",
                           "--heartbeat-interval=100ms", "--log-level=warn"])]
for role in ("prefill", "decode"):
    procs.append(subprocess.Popen([tandem, role, f"--router=tcp://127.0.0.1:{cp}",
                                   f"--model={model}", f"--worker-id={role}0",
                                   "--kv-pool-size=64M", "--log-level=warn"], env=env))
try:
    up = wait_for(lambda: request(http, "GET", "/ready", timeout=2)[0] == 200 and
                  b'tandem_workers{role="decode"} 1' in request(http, "GET", "/metrics")[1] and
                  b'tandem_workers{role="prefill"} 1' in request(http, "GET", "/metrics")[1], 60)
    check("cluster ready (1 prefill + 1 decode)", up)
    for c in canary["tasks"] if up else []:
        res = accuracy(c, canary["n"], ["--url", f"http://127.0.0.1:{http}", "--model", "demo"],
                       f"cluster-{c['task']}")
        check(f"{c['task']}: cluster run completes", res is not None)
        if res is None or c["task"] not in local:
            continue
        lo = local[c["task"]]
        diff = [(i, a["output"], b["output"]) for i, (a, b) in
                enumerate(zip(res["items"], lo["items"])) if a["output"] != b["output"]]
        check(f"{c['task']}: cluster answers identical to in-process on {res['n']} problems",
              not diff, diff[:3])
        check(f"{c['task']}: cluster Pass@1 {res['pass_at_1']:.3f} == in-process "
              f"{lo['pass_at_1']:.3f}", res["pass_at_1"] == lo["pass_at_1"])
        check(f"{c['task']}: cluster prompt tokens equal in-process",
              [i["prompt_tokens"] for i in res["items"]] ==
              [i["prompt_tokens"] for i in lo["items"]])
finally:
    stop_procs(procs)
finish()
