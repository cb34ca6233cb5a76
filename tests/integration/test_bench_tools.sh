#!/usr/bin/env bash
# The engine and kvxfer benchmarks run end to end on small inputs (their
# numbers are recorded in bench/results, never asserted here).
# tt-timeout: 120
set -u
bin=${TANDEM_BIN:?}
root=${TANDEM_ROOT:?}
fail() { echo "FAIL: $*"; exit 1; }

out=$("$bin" bench engine --model "$root/tests/fixtures/models/qwen3moe" --batches 1,2 \
      --prompt-len 4 --decode-steps 2 2>&1) || fail "bench engine exited $?: $out"
grep -q "decode tok/s" <<<"$out" || fail "bench engine table missing: $out"
[ "$(grep -cE '^ +[12] +[0-9]' <<<"$out")" -eq 2 ] || fail "bench engine rows: $out"

out=$("$bin" bench kvxfer --tls tcp,self --sizes 16K --counts 4 --min-time 20ms --pool 8M \
      --perftest=false --out "$TT_TMPDIR/k.jsonl" 2>&1) || fail "bench kvxfer exited $?: $out"
grep -q "coalesced" <<<"$out" || fail "bench kvxfer table missing: $out"
[ "$(wc -l < "$TT_TMPDIR/k.jsonl")" -eq 2 ] || fail "bench kvxfer rows: $(cat "$TT_TMPDIR/k.jsonl")"
grep -q '"puts_per_transfer":1,' "$TT_TMPDIR/k.jsonl" || fail "coalesced row is not one put"
grep -q '"puts_per_transfer":4,' "$TT_TMPDIR/k.jsonl" || fail "per-block row is not 4 puts"

err=$("$bin" bench engine --model /nonexistent 2>&1); rc=$?
[ "$rc" -ne 0 ] && grep -q "config.json" <<<"$err" || fail "bad model: rc=$rc $err"
echo "bench tools ok"
