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

# Shared memory: the receiver's pool is mapped and kvx copies (streaming
# stores); such sends can complete inside kvx_send, which once left the
# windowed loop spinning forever.
out=$(TANDEM_KVX_STREAM_MIN=0 "$bin" bench kvxfer --tls shm,self --sizes 256K --counts 64 \
      --min-time 20ms --rounds 1 --pool 32M --receiver-poll 0ms --perftest=false \
      --out "$TT_TMPDIR/m.jsonl" 2>&1) || fail "bench kvxfer shm exited $?: $out"
[ "$(wc -l < "$TT_TMPDIR/m.jsonl")" -eq 2 ] || fail "bench kvxfer shm rows: $(cat "$TT_TMPDIR/m.jsonl")"
grep -q '"mapped":true' "$TT_TMPDIR/m.jsonl" || fail "shm peer not mapped: $(cat "$TT_TMPDIR/m.jsonl")"
! grep -q "(error)" <<<"$out" || fail "bench kvxfer shm reported an error: $out"

err=$("$bin" bench engine --model /nonexistent 2>&1); rc=$?
[ "$rc" -ne 0 ] && grep -q "config.json" <<<"$err" || fail "bad model: rc=$rc $err"
echo "bench tools ok"
