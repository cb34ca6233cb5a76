#!/usr/bin/env python3
# tt-timeout: 240
"""The cluster end to end on CPU with colocated workers: the real router and
`tandem worker` processes on loopback, on a dense (Qwen3) and an MoE
(Qwen3-MoE, bf16) fixture checkpoint. Greedy tokens through the cluster
equal `tandem generate` in one process for 20+ prompts; streamed chunks
reassemble to the non-streamed text; the openai SDK drives /v1/completions;
32 concurrent clients all succeed; a worker killed with -9 mid-load fails
its requests cleanly (none hangs) and a new worker takes traffic; SIGTERM
drains a worker; `tandem up --colocated 1` starts and stops cleanly."""
import concurrent.futures as cf
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tandem_testlib import check, finish, free_port, stop_procs, use_test_venv, wait_ready  # noqa: E402

use_test_venv()

tandem = os.environ["TANDEM_BIN"]
root = os.environ["TANDEM_ROOT"]


def post(port, path, body, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


class Cluster:
    def __init__(self, model, workers=1):
        self.model = model
        self.dir = os.path.join(root, "tests", "fixtures", "models", model)
        self.http, self.cp = free_port(), free_port()
        self.router = subprocess.Popen(
            [tandem, "router", f"--listen=127.0.0.1:{self.http}", "--grpc-listen=off",
             f"--cp-bind=tcp://127.0.0.1:{self.cp}", f"--model={self.dir}",
             "--heartbeat-interval=100ms", "--missed-heartbeats=4", "--log-level=warn"])
        self.workers = [self.add_worker(i) for i in range(workers)]

    def add_worker(self, i):
        return subprocess.Popen(
            [tandem, "worker", f"--router=tcp://127.0.0.1:{self.cp}", f"--model={self.dir}",
             f"--worker-id=w{i}-{time.time_ns() % 100000}", "--kv-pool-size=32M",
             "--log-level=warn", "--drain-timeout=10s"])

    def stop(self):
        stop_procs(self.workers + [self.router])


def tokens_of(body):
    lp = json.loads(body)["choices"][0]["logprobs"]
    return [int(t.split(":")[1]) for t in lp["tokens"]]


def generate_ids(model_dir, ids, n):
    out = subprocess.run([tandem, "generate", f"--model={model_dir}",
                          "--prompt-ids=" + ",".join(map(str, ids)), f"--max-tokens={n}",
                          "--ignore-eos", "--json"], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)["token_ids"]


rng = random.Random(7)
prompts = [[rng.randrange(3, 256) for _ in range(rng.randint(1, 40))] for _ in range(22)]

for model in ["qwen3", "qwen3moe"]:
    cl = Cluster(model)
    try:
        check(f"{model}: cluster ready", wait_ready(cl.http))
        same = 0
        for ids in prompts:
            st, body = post(cl.http, "/v1/completions",
                            {"model": model, "prompt": ids, "max_tokens": 8, "temperature": 0,
                             "ignore_eos": True, "logprobs": 0,
                             "return_tokens_as_token_ids": True})
            if st == 200 and tokens_of(body) == generate_ids(cl.dir, ids, 8):
                same += 1
            elif same == 0:
                print("   mismatch:", st, body[:300], generate_ids(cl.dir, ids, 8))
        check(f"{model}: cluster == tandem generate on {len(prompts)} prompts",
              same == len(prompts), f"{same}/{len(prompts)}")

        # Streamed chunks reassemble to the non-streamed text.
        body = {"model": model, "prompt": "Hello there", "max_tokens": 12, "temperature": 0,
                "ignore_eos": True}
        st, whole = post(cl.http, "/v1/completions", body)
        c = http.client.HTTPConnection("127.0.0.1", cl.http, timeout=60)
        c.request("POST", "/v1/completions", json.dumps(dict(body, stream=True)),
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        raw = r.read().decode()
        pieces = [json.loads(l[6:])["choices"][0]["text"] for l in raw.split("\n")
                  if l.startswith("data: {")]
        check(f"{model}: stream reassembles", st == 200 and
              "".join(pieces) == json.loads(whole)["choices"][0]["text"] and
              raw.rstrip().endswith("data: [DONE]"), raw[-300:])

        # Concurrency: 32 clients at once, all succeed.
        def one(i):
            return post(cl.http, "/v1/completions",
                        {"model": model, "prompt": [5 + i, 9, 13], "max_tokens": 6,
                         "temperature": 0, "ignore_eos": True})[0]
        with cf.ThreadPoolExecutor(32) as ex:
            codes = list(ex.map(one, range(32)))
        check(f"{model}: 32 concurrent clients all 200", codes == [200] * 32, codes)
    finally:
        cl.stop()

# The official SDK, failures and scale-out, on the dense model.
cl = Cluster("qwen3", workers=1)
try:
    check("sdk cluster ready", wait_ready(cl.http))
    try:
        import openai
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{cl.http}/v1", api_key="x",
                               max_retries=0, timeout=60)
        r = client.completions.create(model="qwen3", prompt="abc", max_tokens=5, temperature=0,
                                      extra_body={"ignore_eos": True})
        check("SDK completions through the cluster", r.usage.completion_tokens == 5 and
              r.usage.prompt_tokens == 3 and r.choices[0].finish_reason == "length", r)
        text = "".join(c.choices[0].text for c in client.completions.create(
            model="qwen3", prompt="abc", max_tokens=5, temperature=0, stream=True,
            extra_body={"ignore_eos": True}) if c.choices)
        check("SDK stream equals non-stream", text == r.choices[0].text, (text, r.choices[0].text))
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
        cr = client.chat.completions.create(model="qwen3", messages=msgs, max_tokens=6,
                                            temperature=0, extra_body={"ignore_eos": True})
        # ChatML rendered by the router, one token per byte with this model.
        rendered = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n" \
                   "<|im_start|>assistant\n"
        check("SDK chat through the cluster", cr.choices[0].message.role == "assistant" and
              cr.usage.completion_tokens == 6 and cr.usage.prompt_tokens == len(rendered), cr)
        chunks = list(client.chat.completions.create(
            model="qwen3", messages=msgs, max_tokens=6, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        check("SDK chat stream equals non-stream, with usage",
              text == cr.choices[0].message.content and chunks[0].choices[0].delta.role ==
              "assistant" and chunks[-1].usage.completion_tokens == 6, (text, cr, chunks[-1]))
    except ImportError:
        check("openai SDK available", False)

    # kill -9 the only worker under load: every request ends (none hangs).
    def long_req(i):
        try:
            return post(cl.http, "/v1/completions",
                        {"model": "qwen3", "prompt": [7, i + 3], "max_tokens": 400,
                         "temperature": 0, "ignore_eos": True}, timeout=30)[0]
        except Exception as e:  # noqa: BLE001
            return repr(e)
    with cf.ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(long_req, i) for i in range(8)]
        time.sleep(0.5)
        cl.workers[0].kill()
        t0 = time.time()
        results = [f.result() for f in futs]
    check("kill -9: every request ended with 200 or 503 within 5 s",
          all(r in (200, 503) for r in results) and time.time() - t0 < 5, (results, time.time() - t0))
    # Scale out: a new worker registers and takes traffic.
    cl.workers.append(cl.add_worker(9))
    check("new worker makes the cluster ready again", wait_ready(cl.http))
    st, _ = post(cl.http, "/v1/completions", {"model": "qwen3", "prompt": [1, 2], "max_tokens": 3})
    check("new worker serves", st == 200, st)
    # SIGTERM drains: the in-flight request still completes.
    with cf.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(post, cl.http, "/v1/completions",
                        {"model": "qwen3", "prompt": [3, 4], "max_tokens": 64, "temperature": 0,
                         "ignore_eos": True})
        time.sleep(0.2)
        cl.workers[-1].send_signal(signal.SIGTERM)
        st, body = fut.result()
    rc = cl.workers[-1].wait(timeout=15)
    check("SIGTERM drains: in-flight request completes, worker exits 0",
          st == 200 and json.loads(body)["usage"]["completion_tokens"] == 64 and rc == 0, (st, rc))
finally:
    cl.stop()

# tandem up --colocated 1: ready banner, a request, Ctrl-C stops everything.
port, cpp = free_port(), free_port()
up = subprocess.Popen([tandem, "up", "--model", os.path.join(root, "tests/fixtures/models/qwen3"),
                       f"--port={port}", f"--cp-port={cpp}", "--prefill=0", "--decode=0",
                       "--colocated=1", "--log-level=warn"], stdout=subprocess.PIPE, text=True)
try:
    # The banner comes once `tandem up` itself saw /ready.
    banner, end = "", time.time() + 60
    while "Press Ctrl-C" not in banner and time.time() < end and up.poll() is None:
        banner += up.stdout.readline()
    check("tandem up: ready banner with a curl", "curl http://127.0.0.1" in banner, banner[-300:])
    st, _ = post(port, "/v1/completions", {"model": "qwen3", "prompt": [1, 2, 3], "max_tokens": 4})
    check("tandem up: serves", st == 200, st)
    up.send_signal(signal.SIGINT)
    rc = up.wait(timeout=30)
    check("tandem up: Ctrl-C stops everything (exit 0)", rc == 0, rc)
finally:
    if up.poll() is None:
        up.kill()

finish()
