#!/usr/bin/env python3
"""A stdlib-only OpenAI-style streaming server: the test peer of
`tandem bench serve` (tests/integration/test_bench_serve.sh).

It streams known timings so the client's measurements can be checked: the
first chunk after --ttft-ms, then one chunk every --itl-ms, max_tokens
chunks in all, each chunk one word ("w0 w1 ..."), then a usage chunk whose
prompt_tokens is the number of whitespace-separated words of the prompt (or
of all message contents), then [DONE]. HTTP/1.1 keep-alive, chunked
transfer encoding. The model name selects misbehaviour:

  error-500   answers 500 with an OpenAI error object
  error-400   answers 400
  reset       sends two chunks, then resets the connection (RST)
  slow        waits 30 s before answering (for client deadlines)
  split       sends every event in 1-3 byte pieces with CRLF line ends
  stream-err  sends one chunk, then an {"error": ...} event
  nodone      ends the stream without finish_reason or [DONE]
  bad-json    sends one chunk, then an event whose data is not JSON

GET /stats returns {"connections": N, "requests": M}.
Prints "PORT <n>" on stdout once listening.
"""
import argparse
import json
import os
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATS = {"connections": 0, "requests": 0}
LOCK = threading.Lock()
ARGS = None


def words(text):
    return len(text.split())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without TCP_NODELAY, Nagle holds each small chunk until the client's
    # delayed ACK (~40 ms) and the timings would be the kernel's, not ours.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        with LOCK:
            STATS["connections"] += 1

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                self.send_json(200, dict(STATS))
        else:
            self.send_json(404, {"error": {"message": "not found"}})

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def event(self, obj, crlf=False, split=False):
        text = obj if isinstance(obj, str) else json.dumps(obj)
        nl = "\r\n" if crlf else "\n"
        raw = ("data: " + text + nl + nl).encode()
        if not split:
            self.chunk(raw)
            return
        i, k = 0, 1
        while i < len(raw):
            self.chunk(raw[i:i + k])
            time.sleep(0.0005)
            i += k
            k = k % 3 + 1

    def do_POST(self):
        with LOCK:
            STATS["requests"] += 1
        n = int(self.headers.get("Content-Length", "0"))
        try:
            req = json.loads(self.rfile.read(n))
        except ValueError:
            return self.send_json(400, {"error": {"message": "bad json"}})
        chat = self.path.endswith("/chat/completions")
        if not (self.path.endswith("/completions")):
            return self.send_json(404, {"error": {"message": "no such path"}})
        if req.get("stream") is not True or not req.get("stream_options", {}).get("include_usage"):
            return self.send_json(400, {"error": {"message": "stream with include_usage expected"}})
        model = req.get("model", "")
        if model == "error-500":
            return self.send_json(500, {"error": {"message": "boom"}})
        if model == "error-400":
            return self.send_json(400, {"error": {"message": "bad"}})
        if model == "slow":
            time.sleep(30)
        if chat:
            prompt_tokens = sum(words(m.get("content", "")) for m in req["messages"])
        else:
            prompt_tokens = words(req["prompt"])
        max_tokens = int(req.get("max_tokens", 16))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        split = model == "split"
        crlf = split
        self.wfile.write(b"")
        self.chunk(b": keep-alive comment\n\n")
        if chat:
            self.event({"object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                       crlf, split)
        time.sleep(ARGS.ttft_ms / 1000.0)
        for i in range(max_tokens):
            if i > 0:
                time.sleep(ARGS.itl_ms / 1000.0)
            text = ("w%d" % i) if i == 0 else (" w%d" % i)
            last = i == max_tokens - 1 and model != "nodone"
            fin = "length" if last else None
            if chat:
                ch = {"index": 0, "delta": {"content": text}, "finish_reason": fin}
                obj = {"object": "chat.completion.chunk", "choices": [ch]}
            else:
                obj = {"object": "text_completion",
                       "choices": [{"index": 0, "text": text, "finish_reason": fin}]}
            self.event(obj, crlf, split)
            if model == "reset" and i == 1:
                # SO_LINGER 0: close() sends an RST instead of a FIN.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                # Close the descriptor itself: socketserver would shut the
                # write side down first, and that FIN could beat the RST.
                os.close(self.connection.detach())
                self.close_connection = True
                return
            if model == "bad-json" and i == 0:
                self.event("{not json", crlf, split)
                break
            if model == "stream-err" and i == 0:
                self.event({"error": {"message": "engine failed", "code": 500}}, crlf, split)
                break
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens,
                 "total_tokens": prompt_tokens + max_tokens}
        self.event({"object": "chat.completion.chunk" if chat else "text_completion",
                    "choices": [], "usage": usage}, crlf, split)
        if model != "nodone":
            self.event("[DONE]", crlf, split)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ttft-ms", type=float, default=50)
    ap.add_argument("--itl-ms", type=float, default=10)
    ap.add_argument("--lifetime-s", type=float, default=120, help="exit after this long")
    ARGS = ap.parse_args()
    ThreadingHTTPServer.request_queue_size = 256  # the default 5 drops SYNs under load
    srv = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    srv.daemon_threads = True
    print("PORT %d" % srv.server_address[1], flush=True)
    threading.Timer(ARGS.lifetime_s, lambda: threading.Thread(target=srv.shutdown).start()).start()
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
