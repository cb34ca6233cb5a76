#!/usr/bin/env python3
# tt-timeout: 300
"""Disaggregated serving end to end on CPU: the real router, `tandem
prefill` and `tandem decode` processes, KV blocks over UCX (TCP and shared
memory). Greedy tokens equal `tandem generate` for 20+ prompts on a dense
and an MoE checkpoint, with the prefill streaming KV layer by layer (the
default) and sending it after the forward pass (--kv-stream=off), and with
a bf16 KV cache (TANDEM_KV_DTYPE=bf16, half the bytes per block), a bf16
decode worker refused next to an f32 prefill worker; 2 prefill
+ 2 decode under 32 concurrent clients all
succeed and every KV block is free afterwards; kill -9 of a prefill and of
a decode worker mid-load ends every request (200 or 503) without a hang."""
import concurrent.futures as cf
import json
import os
import random
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tandem_testlib import check, finish, free_port, request, stop_procs, wait_for  # noqa: E402

tandem = os.environ["TANDEM_BIN"]
root = os.environ["TANDEM_ROOT"]


def metric(port, name):
    _, m = request(port, "GET", "/metrics")
    hit = re.search(re.escape(name) + r" (\d+)", m.decode())
    return int(hit.group(1)) if hit else None


class Cluster:
    def __init__(self, model, prefill=1, decode=1, tls="tcp,self", stream="layer", kv="auto"):
        self.stream = stream
        self.dir = os.path.join(root, "tests", "fixtures", "models", model)
        self.http, self.cp = free_port(), free_port()
        self.env = dict(os.environ, UCX_TLS=tls, TANDEM_KV_DTYPE=kv)
        self.router = subprocess.Popen(
            [tandem, "router", f"--listen=127.0.0.1:{self.http}", "--grpc-listen=off",
             f"--cp-bind=tcp://127.0.0.1:{self.cp}", f"--model={self.dir}",
             "--heartbeat-interval=100ms", "--missed-heartbeats=4", "--log-level=warn"])
        self.procs = {}
        for i in range(prefill):
            self.add("prefill", f"p{i}")
        for i in range(decode):
            self.add("decode", f"d{i}")
        self.n = prefill + decode

    def add(self, role, name):
        self.procs[name] = subprocess.Popen(
            [tandem, role, f"--router=tcp://127.0.0.1:{self.cp}", f"--model={self.dir}",
             f"--worker-id={name}", "--kv-pool-size=16M", "--log-level=warn",
             "--drain-timeout=10s"] + ([f"--kv-stream={self.stream}"] if role == "prefill" else []),
            env=self.env)

    def ready(self):
        return wait_for(lambda: request(self.http, "GET", "/ready", timeout=2)[0] == 200 and
                        (metric(self.http, 'tandem_workers{role="prefill"}') or 0) +
                        (metric(self.http, 'tandem_workers{role="decode"}') or 0) >= self.n, 30)

    def stop(self):
        stop_procs(list(self.procs.values()) + [self.router])


def tokens(port, ids, n):
    st, body = request(port, "POST", "/v1/completions",
                       {"model": os.path.basename(cl.dir), "prompt": ids, "max_tokens": n,
                        "temperature": 0, "ignore_eos": True, "logprobs": 0,
                        "return_tokens_as_token_ids": True})
    if st != 200:
        return st, body[:300]
    return [int(t.split(":")[1]) for t in json.loads(body)["choices"][0]["logprobs"]["tokens"]]


def generate_ids(model_dir, ids, n, kv="auto"):
    out = subprocess.run([tandem, "generate", f"--model={model_dir}",
                          "--prompt-ids=" + ",".join(map(str, ids)), f"--max-tokens={n}",
                          "--ignore-eos", "--json"], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, TANDEM_KV_DTYPE=kv))
    return json.loads(out.stdout)["token_ids"]


rng = random.Random(11)
prompts = [[rng.randrange(3, 256) for _ in range(rng.randint(1, 60))] for _ in range(21)]

for model, tls, stream, kv in [("qwen3", "tcp,self", "layer", "auto"),
                               ("qwen3moe", "shm,self", "off", "auto"),
                               ("qwen3", "shm,self", "off", "auto"),
                               ("qwen3moe", "tcp,self", "layer", "auto"),
                               ("qwen3", "tcp,self", "layer", "bf16")]:
    cl = Cluster(model, tls=tls, stream=stream, kv=kv)
    tls = f"{tls} kv-stream={stream} kv={kv}"
    try:
        check(f"{model}/{tls}: 1 prefill + 1 decode ready", cl.ready())
        same = 0
        for ids in prompts:
            got, want = tokens(cl.http, ids, 8), generate_ids(cl.dir, ids, 8, kv)
            same += got == want
            if got != want and same == 0:
                print("   mismatch", ids, got, want)
        check(f"{model}/{tls}: disaggregated == tandem generate on {len(prompts)} prompts",
              same == len(prompts), f"{same}/{len(prompts)}")
    finally:
        cl.stop()

# A decode worker whose KV cache is bf16 next to an f32 prefill worker:
# the layouts differ, so the router refuses the later one by fingerprint
# and it exits non-zero, saying why (never a silent mix of dtypes).
cl = Cluster("qwen3", prefill=1, decode=0, kv="f32")
try:
    check("f32 prefill registered",
          wait_for(lambda: (metric(cl.http, 'tandem_workers{role="prefill"}') or 0) == 1, 30))
    bad = subprocess.Popen(
        [tandem, "decode", f"--router=tcp://127.0.0.1:{cl.cp}", f"--model={cl.dir}",
         "--worker-id=dbf", "--kv-pool-size=16M", "--log-level=warn"],
        env=dict(cl.env, TANDEM_KV_DTYPE="bf16"), stderr=subprocess.PIPE, text=True)
    try:
        _, err = bad.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        bad.kill()
        _, err = bad.communicate()
    check("bf16-KV decode next to an f32-KV prefill: refused by layout fingerprint, exit != 0",
          bad.returncode not in (0, None) and "fingerprint" in err, (bad.returncode, err[-300:]))
finally:
    cl.stop()

cl = Cluster("qwen3", prefill=2, decode=2)
try:
    check("2 prefill + 2 decode ready", cl.ready())

    def one(i):
        try:
            return request(cl.http, "POST", "/v1/completions",
                           {"model": "qwen3", "prompt": [4 + i % 200] * (5 + i % 40),
                            "max_tokens": 12, "temperature": 0, "ignore_eos": True})[0]
        except Exception as e:  # noqa: BLE001
            return repr(e)
    with cf.ThreadPoolExecutor(32) as ex:
        codes = list(ex.map(one, range(64)))
    check("32 concurrent clients, 64 requests: all 200", codes == [200] * 64, codes)
    # Every KV block is free again (heartbeats carry the decode pools' use).
    check("/metrics counts KV transfers",
          wait_for(lambda: (metric(cl.http, "tandem_kv_transfer_seconds_count") or 0) >= 64 and
                   (metric(cl.http, "tandem_kv_transfer_bytes_total") or 0) > 0 and
                   (metric(cl.http, "tandem_kv_notices_received_total") or 0) >= 64 and
                   metric(cl.http, "tandem_kv_wait_seconds_count") ==
                   metric(cl.http, "tandem_kv_transfer_seconds_count"), 3),
          (metric(cl.http, "tandem_kv_transfer_seconds_count"),
           metric(cl.http, "tandem_kv_notices_received_total")))
    check("every decode KV block free afterwards",
          wait_for(lambda: metric(cl.http, 'tandem_kv_blocks{state="used"}') == 0, 5),
          metric(cl.http, 'tandem_kv_blocks{state="used"}'))

    # kill -9 a prefill worker and a decode worker under load.
    def long_one(i):
        try:
            return request(cl.http, "POST", "/v1/completions",
                           {"model": "qwen3", "prompt": [9, i + 3] * 20, "max_tokens": 200,
                            "temperature": 0, "ignore_eos": True}, timeout=30)[0]
        except Exception as e:  # noqa: BLE001
            return repr(e)
    with cf.ThreadPoolExecutor(16) as ex:
        futs = [ex.submit(long_one, i) for i in range(16)]
        time.sleep(0.4)
        cl.procs["p0"].kill()
        cl.procs["d0"].kill()
        t0 = time.time()
        results = [f.result() for f in futs]
    check("kill -9 of a prefill and a decode worker: every request ends (200/503) in time",
          all(r in (200, 503) for r in results) and time.time() - t0 < 20, results)
    st, _ = request(cl.http, "POST", "/v1/completions",
                    {"model": "qwen3", "prompt": [1, 2, 3], "max_tokens": 4})
    check("survivors keep serving", st == 200, st)
    check("survivors' KV blocks all free",
          wait_for(lambda: metric(cl.http, 'tandem_kv_blocks{state="used"}') == 0, 5),
          metric(cl.http, 'tandem_kv_blocks{state="used"}'))
finally:
    cl.stop()

finish()
