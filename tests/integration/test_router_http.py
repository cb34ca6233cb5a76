#!/usr/bin/env python3
# tt-timeout: 120
"""The router's OpenAI HTTP API, end to end over loopback: the real
`tandem router` with a worker process speaking the control-plane protocol
(the scripted colocated worker of tests/unit/test_rt_sched.c: token i+1
after the first prompt id, text "<id>;" per token). Raw HTTP checks the
status codes and error bodies, keep-alive, pipelining, many connections and
disconnects; the official `openai` SDK drives both endpoints, streaming and
not. Runs with TANDEM_TEST_PYTHON (build/venv-test) when it has `openai`."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

py = os.environ.get("TANDEM_TEST_PYTHON")
venv = os.path.dirname(os.path.dirname(py)) if py else None
if venv and os.path.exists(py) and os.path.realpath(sys.prefix) != os.path.realpath(venv):
    os.execv(py, [py] + sys.argv)  # rerun under the test venv (has openai)

tandem = os.environ["TANDEM_BIN"]
tests_bin = os.path.join(os.environ["TANDEM_BUILD"], "bin", "tandem-tests")
failures = []


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f": {detail}"))
    if not cond:
        failures.append(name)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


http_port, grpc_port, cp_port = free_port(), free_port(), free_port()
router = subprocess.Popen([tandem, "router", f"--listen=127.0.0.1:{http_port}",
                           f"--grpc-listen=127.0.0.1:{grpc_port}",
                           f"--cp-bind=tcp://127.0.0.1:{cp_port}", "--served-model-name=tiny",
                           "--max-body-size=64K", "--heartbeat-interval=100ms",
                           "--log-level=warn"])
worker = None


def request(method, path, body=None, headers=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    data = json.dumps(body) if isinstance(body, (dict, list)) else body
    c.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
    r = c.getresponse()
    raw = r.read()
    if not conn:
        c.close()
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = raw
    return r.status, payload, r


def wait_for(path, status, seconds):
    end = time.time() + seconds
    while time.time() < end:
        try:
            if request("GET", path)[0] == status:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


try:
    check("router up (/health 200)", wait_for("/health", 200, 10))
    st, body, resp = request("GET", "/ready")
    check("/ready 503 without workers", st == 503 and resp.getheader("Retry-After") == "1", st)
    st, body, resp = request("POST", "/v1/completions", {"model": "tiny", "prompt": [1, 2]})
    check("no workers: 503 + Retry-After", st == 503 and resp.getheader("Retry-After") == "1"
          and body["error"]["type"] == "service_unavailable", (st, body))

    worker = subprocess.Popen([tests_bin, "--child", "sched_worker",
                               f"tcp://127.0.0.1:{cp_port}", "co0", "3", "0", "0", "0", "32",
                               "1"], stdout=subprocess.DEVNULL)
    check("/ready 200 once a worker registered", wait_for("/ready", 200, 10))

    st, body, _ = request("GET", "/v1/models")
    check("/v1/models lists the model", st == 200 and body["object"] == "list"
          and body["data"][0]["id"] == "tiny", body)

    # Bad input: status codes and OpenAI-style error bodies.
    def err(name, want, method, path, payload, param=None, needle=""):
        st, body, _ = request(method, path, payload)
        ok = (st == want and isinstance(body, dict) and "error" in body
              and body["error"]["param"] == param and needle in body["error"]["message"])
        check(name, ok, (st, body))

    err("malformed JSON", 400, "POST", "/v1/completions", "{not json")
    err("body not an object", 400, "POST", "/v1/completions", "[1,2]")
    err("wrong type", 400, "POST", "/v1/completions",
        {"model": "tiny", "prompt": [1], "temperature": "hot"}, "temperature")
    err("max_tokens out of range", 400, "POST", "/v1/completions",
        {"model": "tiny", "prompt": [1], "max_tokens": 0}, "max_tokens")
    err("n=2", 400, "POST", "/v1/completions", {"model": "tiny", "prompt": [1], "n": 2}, "n")
    err("unknown model", 404, "POST", "/v1/completions", {"model": "gpt-9", "prompt": [1]},
        None, "does not exist")
    err("prompt beyond context", 400, "POST", "/v1/completions",
        {"model": "tiny", "prompt": list(range(1, 400)), "max_tokens": 200}, None,
        "maximum context length")
    err("missing messages", 400, "POST", "/v1/chat/completions", {"model": "tiny"}, "messages")
    err("bad role", 400, "POST", "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, "messages")
    # Error bodies stay UTF-8 JSON: a body that is not UTF-8 is refused, and
    # a long non-ASCII value echoed in a message is not cut inside a
    # character (both found by tests/fuzz/fuzz_oai.c).
    err("body not UTF-8", 400, "POST", "/v1/chat/completions",
        b'{"model": "tiny", "messages": [{"role": "us\xfe\xd7er", "content": "x"}]}', None,
        "not valid UTF-8")
    err("long non-ASCII role", 400, "POST", "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "\u4e2d" * 200, "content": "x"}]}, "messages",
        "is not supported")
    err("unknown path", 404, "GET", "/v2/everything", None)
    err("wrong method", 405, "GET", "/v1/completions", None)
    err("body too large", 413, "POST", "/v1/completions",
        {"model": "tiny", "prompt": "x" * 70000})
    err("text prompt needs a tokenizer", 400, "POST", "/v1/completions",
        {"model": "tiny", "prompt": "hello"}, None, "no tokenizer")
    # U+0000 in a request string would be cut there by the JSON parser:
    # refused, never shortened without a word.
    err("U+0000 in the prompt", 400, "POST", "/v1/completions",
        {"model": "tiny", "prompt": "a\u0000b"}, None, "U+0000")
    err("U+0000 in a stop string", 400, "POST", "/v1/completions",
        {"model": "tiny", "prompt": [1], "stop": ["x\u0000"]}, None, "U+0000")
    st, body, _ = request("POST", "/v1/completions",
                          {"model": "tiny", "prompt": [1], "stop": ["\\u0000"], "max_tokens": 1})
    check("an escaped backslash before u0000 is not U+0000", st == 200, (st, body))

    # Generated text holding U+0000 (the scripted worker's token 777) comes
    # back whole, escaped as \u0000, with the text after it.
    st, body, _ = request("POST", "/v1/completions",
                          {"model": "tiny", "prompt": [776], "max_tokens": 2, "logprobs": 0})
    choice = body["choices"][0] if st == 200 else {}
    check("U+0000 in generated text", choice.get("text") == "nul\x00777;778;", (st, body))
    check("U+0000 in a logprobs token", (choice.get("logprobs") or {}).get("tokens") ==
          ["nul\x00777;", "778;"], choice)

    # Keep-alive: several requests on one connection.
    c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    texts = [request("POST", "/v1/completions", {"model": "tiny", "prompt": [10 * i],
                                                 "max_tokens": 2}, conn=c)[1]["choices"][0]["text"]
             for i in range(1, 4)]
    check("keep-alive, 3 requests on one connection",
          texts == ["11;12;", "21;22;", "31;32;"], texts)
    c.close()

    # Pipelining: three requests in one write, answered in order.
    s = socket.create_connection(("127.0.0.1", http_port), timeout=10)
    reqs = b""
    for i, path in enumerate(["/health", "/v1/models", "/health"]):
        reqs += f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    s.sendall(reqs)
    got = b""
    end = time.time() + 5
    while got.count(b"HTTP/1.1 200") < 3 and time.time() < end:
        got += s.recv(65536)
    s.close()
    check("pipelined requests answered in order", got.count(b"HTTP/1.1 200") == 3 and
          got.index(b'"object":"list"') > got.index(b'{"status":"ok"}'), got[:200])

    # Many concurrent connections.
    socks = [socket.create_connection(("127.0.0.1", http_port), timeout=10) for _ in range(200)]
    for s in socks:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answered = sum(1 for s in socks if b"200 OK" in s.recv(4096))
    for s in socks:
        s.close()
    check("200 concurrent connections answered", answered == 200, answered)

    # A client that disconnects mid-stream: the request is canceled.
    s = socket.create_connection(("127.0.0.1", http_port), timeout=10)
    body = json.dumps({"model": "tiny", "prompt": [5], "max_tokens": 300, "stream": True})
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    first = s.recv(4096)
    s.close()
    time.sleep(0.3)
    st, metrics, _ = request("GET", "/metrics")
    metrics = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
    check("stream started before the disconnect", b"text/event-stream" in first, first[:120])
    check("disconnect cancels the request",
          'tandem_requests_finished_total{outcome="canceled"} 1' in metrics, metrics[-800:])
    check("/metrics has latency histograms",
          "tandem_time_to_first_token_seconds_bucket" in metrics and
          'tandem_http_requests_total{endpoint="completions",code="400"}' in metrics)

    # The official OpenAI SDK.
    try:
        import openai
    except ImportError:
        openai = None
    if openai is None:
        check("openai SDK available (make test installs it in build/venv-test)", False)
    else:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="none",
                               max_retries=0)
        r = client.completions.create(model="tiny", prompt=[41, 1], max_tokens=3,
                                      temperature=0)
        check("SDK completions", r.choices[0].text == "42;43;44;" and
              r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3 and
              r.usage.prompt_tokens == 2, r)
        chunks = list(client.completions.create(model="tiny", prompt=[41, 1], max_tokens=3,
                                                stream=True,
                                                stream_options={"include_usage": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        check("SDK completions stream reassembles", text == "42;43;44;", text)
        check("SDK stream usage chunk", chunks[-1].usage is not None and
              chunks[-1].usage.total_tokens == 5 and chunks[-1].choices == [], chunks[-1])
        check("SDK stream finish reason", [c.choices[0].finish_reason for c in chunks
                                           if c.choices][-1] == "length")
        chunks = client.completions.create(model="tiny", prompt=[775], max_tokens=3, stream=True)
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        check("SDK stream keeps U+0000", text == "776;nul\x00777;778;", repr(text))
        try:
            client.chat.completions.create(model="tiny",
                                           messages=[{"role": "user", "content": "hi"}])
            check("SDK chat without tokenizer refused", False, "no error")
        except openai.BadRequestError as e:
            check("SDK chat without tokenizer refused", "no tokenizer" in str(e), e)
        try:
            client.completions.create(model="nope", prompt=[1])
            check("SDK unknown model", False, "no error")
        except openai.NotFoundError:
            check("SDK unknown model", True)

    # SIGTERM: a clean, prompt exit.
    router.send_signal(signal.SIGTERM)
    try:
        rc = router.wait(timeout=5)
    except subprocess.TimeoutExpired:
        rc = None
    check("SIGTERM exits 0 within 5 s", rc == 0, rc)
finally:
    for p in (worker, router):
        if p and p.poll() is None:
            p.kill()
            p.wait()

print(f"{len(failures)} failures")
sys.exit(1 if failures else 0)
