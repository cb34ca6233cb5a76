#!/usr/bin/env bash
# A receiver sleeping on the kvx fd is woken by every notice, over shared
# memory and TCP: `tandem bench kvxfer` with a receiver that sleeps up to
# 3 s between progress calls must see each notice's one-way latency far
# below that sleep. Over UCX 1.13 shared memory with UCP's adaptive
# progress on (UCX_ADAPTIVE_PROGRESS=y; kvx turns it off) every notice
# waited for the sleep to run out (kvx.h, "Wakeups"): this test then fails.
# tt-timeout: 120
set -u
bin=${TANDEM_BIN:?TANDEM_BIN not set}
fail() { echo "FAIL: $*"; exit 1; }

for tls in shm,self tcp,self; do
  j="$TT_TMPDIR/wake-${tls%%,*}.jsonl"
  out=$("$bin" bench kvxfer --tls "$tls" --sizes 16K --counts 1 --rounds 1 --min-time 300ms \
        --pool 4M --perftest=false --receiver-poll 3s --out "$j" 2>&1) ||
    fail "bench kvxfer ($tls) exited $?: $out"
  [ "$(wc -l < "$j")" -eq 1 ] || fail "$tls: want one row: $(cat "$j")"
  p99=$(sed -n 's/.*"recv_latency_p99_us":\([0-9.]*\).*/\1/p' "$j")
  [ -n "$p99" ] || fail "$tls: no receiver latency in $(cat "$j")"
  # Not a speed check: a lost wakeup costs the whole 3 s sleep.
  awk -v p="$p99" 'BEGIN { exit !(p > 0 && p < 1000000) }' ||
    fail "$tls: receiver p99 latency ${p99} us: notices did not wake the sleeping receiver"
  echo "$tls: receiver latency p99 ${p99} us"
done
