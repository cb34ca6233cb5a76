#!/usr/bin/env bash
# `tandem bench serve` and `tandem bench compare` against a real local HTTP
# server: the stdlib-Python SSE peer (bench_sse_peer.py), which streams with
# known delays, so TTFT, TPOT and ITL are asserted within tolerance; token
# counts against the peer's usage; every error kind against a misbehaving
# peer; the open-loop rate; the multi-turn history; bench/plot.py when
# matplotlib is importable.
# tt-timeout: 120
set -u
bin=${TANDEM_BIN:?TANDEM_BIN not set}
root=${TANDEM_ROOT:?}
tmp=${TT_TMPDIR:?}
fail() { echo "FAIL: $*"; exit 1; }
command -v python3 >/dev/null || { echo "no python3"; exit 77; }

TTFT=120 ITL=25
python3 "$root/tests/integration/bench_sse_peer.py" --ttft-ms $TTFT --itl-ms $ITL \
  --lifetime-s 110 >"$tmp/peer.out" 2>"$tmp/peer.err" &
peer=$!
trap 'kill $peer 2>/dev/null; wait $peer 2>/dev/null' EXIT
port=
for _ in $(seq 100); do
  port=$(sed -n 's/^PORT //p' "$tmp/peer.out")
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || fail "peer did not start: $(cat "$tmp/peer.err")"
url=http://127.0.0.1:$port
serve() { "$bin" bench serve --url "$url" --warmup 0 --duration 10s "$@"; }
check() { python3 - "$@" || fail "check failed: $*"; }

# 1. Closed loop: baseline + concurrency 1 and 4, fixed lengths.
serve --model m --input-len 16 --output-len 6 --baseline 2 --concurrency 1,4 \
  --num-requests 8 --warmup 1 --out "$tmp/a" >"$tmp/a.log" 2>&1 || fail "serve a: $(cat "$tmp/a.log")"
grep -q "concurrency=4" "$tmp/a.log" || fail "no table: $(cat "$tmp/a.log")"
[ -s "$tmp/a.csv" ] && [ -s "$tmp/a.requests.csv" ] || fail "csv files missing"
[ "$(wc -l <"$tmp/a.csv")" -eq 4 ] || fail "a.csv should have a header and 3 rows"
[ "$(wc -l <"$tmp/a.requests.csv")" -eq 19 ] || fail "a.requests.csv should have 18 rows"
check "$tmp/a.json" $TTFT $ITL <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); ttft, itl = float(sys.argv[2]), float(sys.argv[3])
pts = {p["label"]: p for p in d["points"]}
assert list(pts) == ["baseline", "concurrency=1", "concurrency=4"], list(pts)
assert [pts[k]["requests"] for k in pts] == [2, 8, 8]
for p in pts.values():
    assert p["success_rate"] == 1 and p["errors"] == {}, p
    assert p["output_tokens"] == 6 * p["ok"] and p["input_tokens"] == 16 * p["ok"], p
    assert p["usage_reported"] == p["ok"]
    # The peer sleeps ttft before the first chunk and itl between chunks.
    assert ttft <= p["ttft_ms"]["p50"] <= ttft + 60, p["ttft_ms"]
    assert itl - 1 <= p["tpot_ms"]["p50"] <= itl + 12, p["tpot_ms"]
    assert itl - 1 <= p["itl_ms"]["p50"] <= itl + 12, p["itl_ms"]
    e2e = ttft + 5 * itl
    assert e2e <= p["e2e_ms"]["p50"] <= e2e + 100, p["e2e_ms"]
    assert p["itl_ms"]["n"] == 5 * p["ok"]
    for m in ("ttft_ms", "tpot_ms", "e2e_ms"):
        s = p[m]
        assert s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"], s
# Throughput follows from the known timings: 4 users in parallel, each
# request takes about e2e; tolerate a loaded machine.
c1, c4 = pts["concurrency=1"], pts["concurrency=4"]
assert 2.5 <= c4["req_s"] / c1["req_s"] <= 4.5, (c1["req_s"], c4["req_s"])
assert abs(c4["output_tok_s"] - 6 * c4["req_s"]) < 1e-6 * c4["output_tok_s"] + 1e-9
EOF
# Keep-alive: 1 connection for the sequential phases, 4 at concurrency 4.
conns=$(python3 -c "import json,urllib.request;print(json.load(urllib.request.urlopen('$url/stats'))['connections'])")
[ "$conns" -le 6 ] || fail "keep-alive not used: $conns connections for 19 requests"

# 2. Open loop: Poisson at 20 req/s for 1.5 s, chat endpoint, split events.
serve --model split --endpoint /v1/chat/completions --input-len 8 --output-len 2 \
  --concurrency '' --rate 20 --duration 1500ms --seed 5 --out "$tmp/r" >"$tmp/r.log" 2>&1 \
  || fail "serve r: $(cat "$tmp/r.log")"
check "$tmp/r.json" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))["points"][0]
assert p["label"] == "rate=20" and p["rate"] == 20 and p["concurrency"] is None
# 30 expected arrivals; Poisson sd 5.5.
assert 12 <= p["requests"] <= 50, p["requests"]
assert p["success_rate"] == 1, p["errors"]
assert p["output_tokens"] == 2 * p["ok"], p
EOF

# 3. Multi-turn over a shared prefix on the chat endpoint: each turn resends
# the history. The peer counts prompt words: turn k of a session carries
# P + k*Q + (k-1)*A words, so two 3-turn sessions total
# 2 * ((50+10) + (50+20+4) + (50+30+8)) = 444.
serve --model m --endpoint /v1/chat/completions --workload multiturn --prefix-len 50 --turns 3 \
  --turn-len 10 --output-len 4 --concurrency 2 --num-requests 6 --out "$tmp/m" >"$tmp/m.log" 2>&1 \
  || fail "serve m: $(cat "$tmp/m.log")"
check "$tmp/m.json" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))["points"][0]
assert p["ok"] == 6 and p["input_tokens"] == 444, p
EOF

# 4. Errors by kind: HTTP 5xx/4xx, reset, stream error, missing end, timeout,
# refused. The run itself succeeds and reports them.
expect_error() { # model kind [extra flags]
  local model=$1 kind=$2; shift 2
  serve --model "$model" --input-len 4 --output-len 3 --concurrency 1 --num-requests 2 \
    --out "$tmp/e" "$@" >"$tmp/e.log" 2>&1 || fail "serve $model: $(cat "$tmp/e.log")"
  check "$tmp/e.json" "$kind" <<'EOF' || fail "$model: $(cat "$tmp/e.log")"
import json, sys
p = json.load(open(sys.argv[1]))["points"][0]
kinds = sys.argv[2].split("|")
assert set(p["errors"]) <= set(kinds) and sum(p["errors"].values()) == 2, p["errors"]
assert p["success_rate"] == 0, p
EOF
}
expect_error error-500 http_5xx
expect_error error-400 http_4xx
# An RST that follows data is read as a reset or, when the kernel reports the
# end of the stream first, as an early close: both mean "died mid-answer".
expect_error reset "connection_reset|closed_early"
expect_error stream-err stream_error
expect_error nodone incomplete_stream
expect_error bad-json protocol_error
expect_error slow timeout --timeout 300ms
dead=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1]);s.close()")
url=http://127.0.0.1:$dead expect_error m connect_refused
url=http://127.0.0.1:$port

# Bad flags: one line, exit 2.
err=$("$bin" bench serve --url https://x 2>&1); rc=$?
[ $rc -eq 2 ] && [ "$(wc -l <<<"$err")" -eq 1 ] || fail "https url: rc=$rc $err"
err=$("$bin" bench serve --concurrency 1,x 2>&1); rc=$?
[ $rc -eq 2 ] || fail "bad list: rc=$rc $err"
err=$("$bin" bench serve --workload sharegpt --sharegpt /nonexistent.json 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q nonexistent <<<"$err" || fail "missing sharegpt: rc=$rc $err"

# 5. compare: the table with differences and % change.
# B also has a baseline at two prompt lengths (points A lacks).
serve --model m --input-len 16 --output-len 6 --concurrency 1,4 --num-requests 4 \
  --baseline 2 --baseline-lens 8,32 --out "$tmp/b" >"$tmp/b.log" 2>&1 || fail "serve b: $(cat "$tmp/b.log")"
check "$tmp/b.json" <<'EOF'
import json, sys
pts = json.load(open(sys.argv[1]))["points"]
assert [p["label"] for p in pts] == ["baseline@in=8", "baseline@in=32", "concurrency=1",
                                     "concurrency=4"], [p["label"] for p in pts]
for p, n in zip(pts[:2], (8, 32)):
    assert p["input_len"] == n and p["ok"] == 2 and p["input_tokens"] == 2 * n, p
EOF
"$bin" bench compare --label-a NO-OFFLOAD --label-b NATIVE-OFFLOAD --csv "$tmp/cmp.csv" \
  "$tmp/a.json" "$tmp/b.json" >"$tmp/cmp.txt" || fail "compare failed"
grep -q "NO-OFFLOAD" "$tmp/cmp.txt" && grep -q "% Change" "$tmp/cmp.txt" || fail "compare table"
grep -q "^  baseline .*| *- *| *- *| *- *$" <<<"$(grep -A7 '^output_tok_s' "$tmp/cmp.txt")" \
  || fail "a point only in A should show '-' for B: $(cat "$tmp/cmp.txt")"
grep -q "^  baseline@in=32 *| *- *|" <<<"$(grep -A7 '^output_tok_s' "$tmp/cmp.txt")" \
  || fail "a point only in B should show '-' for A: $(cat "$tmp/cmp.txt")"
check "$tmp/cmp.csv" "$tmp/a.json" "$tmp/b.json" <<'EOF'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))
a = {p["label"]: p for p in json.load(open(sys.argv[2]))["points"]}
b = {p["label"]: p for p in json.load(open(sys.argv[3]))["points"]}
r = [x for x in rows if x["metric"] == "ttft_ms.p50" and x["point"] == "concurrency=4"][0]
va, vb = a["concurrency=4"]["ttft_ms"]["p50"], b["concurrency=4"]["ttft_ms"]["p50"]
assert abs(float(r["difference"]) - (vb - va)) < 1e-6
assert abs(float(r["pct_change"]) - 100 * (vb - va) / va) < 1e-6
EOF
"$bin" bench compare "$tmp/a.json" 2>/dev/null && fail "compare with one file should fail"
"$bin" bench compare "$tmp/a.json" "$tmp/a.log" 2>/dev/null && fail "compare of a non-result should fail"

# 6. Charts, when matplotlib is available (the shared venv has it; CI may not).
py=
for c in "$root/build/venv/bin/python" python3; do
  if command -v "$c" >/dev/null && "$c" -c "import matplotlib" 2>/dev/null; then py=$c; break; fi
done
if [ -n "$py" ]; then
  "$py" "$root/bench/plot.py" --out "$tmp/charts" "$tmp/a.json" "$tmp/b.json" >"$tmp/plot.log" 2>&1 \
    || fail "plot.py: $(cat "$tmp/plot.log")"
  for f in throughput ttft latency success; do
    [ -s "$tmp/charts/$f.png" ] || fail "chart $f.png missing"
  done
else
  echo "matplotlib not found: charts not checked"
fi
echo "ok"
