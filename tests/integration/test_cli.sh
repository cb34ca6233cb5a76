#!/usr/bin/env bash
# The tandem CLI contract: --help lists every command, --version, unknown
# commands and bad flags exit non-zero with a one-line reason, and flags are
# readable from TANDEM_* environment variables.
# tt-timeout: 60
set -u
bin=${TANDEM_BIN:?TANDEM_BIN not set}
fail() { echo "FAIL: $*"; exit 1; }

out=$("$bin" --help) || fail "--help exited $?"
for cmd in router prefill decode worker up generate tokenize bench; do
  grep -qE "^  $cmd " <<<"$out" || fail "--help does not list '$cmd'"
done

"$bin" --version | grep -qE '^tandem [0-9]+\.[0-9]+\.[0-9]+ \(commit ' || fail "--version format"
"$bin" --version | grep -qE '^cuda: ' || fail "--version lacks the cuda line"

# Unknown command: exit 2 and exactly one line on stderr, nothing on stdout.
err=$("$bin" frobnicate 2>&1 >/dev/null); rc=$?
[ "$rc" -eq 2 ] || fail "unknown command exited $rc, want 2"
[ "$(wc -l <<<"$err")" -eq 1 ] || fail "unknown command printed more than one line: $err"
grep -q "unknown command 'frobnicate'" <<<"$err" || fail "reason missing: $err"
[ -z "$("$bin" frobnicate 2>/dev/null)" ] || fail "stdout not empty on error"

err=$("$bin" --frob 2>&1); rc=$?
[ "$rc" -eq 2 ] && grep -q "unknown flag '--frob'" <<<"$err" || fail "unknown top-level flag: rc=$rc $err"

"$bin" >/dev/null 2>&1 && fail "no arguments should exit non-zero"

# Every command answers --help with exit 0.
for cmd in router prefill decode worker up generate tokenize bench; do
  "$bin" "$cmd" --help >/dev/null || fail "'$cmd --help' exited $?"
  "$bin" help "$cmd" >/dev/null || fail "'help $cmd' exited $?"
done

# A real command with flags: bench hash. Bad flag → one line, exit 2.
err=$("$bin" bench hash --no-such-flag 2>&1); rc=$?
[ "$rc" -eq 2 ] || fail "bad flag exited $rc"
[ "$(wc -l <<<"$err")" -eq 1 ] || fail "bad flag printed more than one line"
grep -q "tandem bench hash: unknown flag '--no-such-flag'" <<<"$err" || fail "bad flag reason: $err"

err=$("$bin" bench hash --size 12Q 2>&1); rc=$?
[ "$rc" -eq 2 ] && grep -q "bad value '12Q' for --size" <<<"$err" || fail "bad value: rc=$rc $err"

# Environment fallback: TANDEM_SIZE sets --size; the command line wins.
out=$(TANDEM_SIZE=4K TANDEM_MIN_TIME=20ms "$bin" bench hash) || fail "bench hash via env exited $?"
grep -q '"size":4096,' <<<"$out" || fail "TANDEM_SIZE not applied: $out"
out=$(TANDEM_SIZE=4K "$bin" bench hash --size 8K --min-time 20ms) || fail "bench hash exited $?"
grep -q '"size":8192,' <<<"$out" || fail "command line did not win over env: $out"
err=$(TANDEM_SIZE=lots "$bin" bench hash 2>&1); rc=$?
[ "$rc" -eq 2 ] && grep -q "bad value 'lots' in TANDEM_SIZE" <<<"$err" || fail "bad env value: rc=$rc $err"
err=$(TANDEM_LOG_LEVEL=chatty "$bin" bench hash 2>&1); rc=$?
[ "$rc" -eq 2 ] && grep -q "TANDEM_LOG_LEVEL" <<<"$err" || fail "bad global env: rc=$rc $err"

# generate: a value the flag's range allows but the sampler does not
# (top-p 0) is refused with the sampler's sentence and exit 2, as an
# out-of-range flag is.
model="$(dirname "$0")/../fixtures/models/qwen3"
err=$("$bin" generate --model "$model" --prompt hi --top-p 0 2>&1); rc=$?
[ "$rc" -eq 2 ] && grep -q "top_p must be in (0, 1], got 0" <<<"$err" || fail "top-p 0: rc=$rc $err"
err=$("$bin" generate --model "$model" --prompt hi --temperature -1 2>&1); rc=$?
[ "$rc" -eq 2 ] && grep -q "bad value '-1' for --temperature" <<<"$err" || fail "temperature: rc=$rc $err"

# Help shows the environment variable of each flag.
"$bin" bench hash --help | grep -q 'env: TANDEM_MIN_TIME' || fail "help lacks env names"
echo "cli contract ok"
