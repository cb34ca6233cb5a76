#!/usr/bin/env bash
# scripts/install-deps.sh: silent and 0 when everything is installed; names
# what is missing and exits 1 in --check mode and when not root.
# tt-timeout: 60
set -u
cd "${TANDEM_ROOT:?}"
fail() { echo "FAIL: $*"; exit 1; }

out=$(scripts/install-deps.sh 2>&1); rc=$?
[ "$rc" -eq 0 ] || fail "install-deps exited $rc with everything installed: $out"
[ -z "$out" ] || fail "install-deps printed output with everything installed: $out"

out=$(TANDEM_DEPS_EXTRA=tandem-no-such-package scripts/install-deps.sh --check 2>&1); rc=$?
[ "$rc" -eq 1 ] || fail "--check with a missing package exited $rc"
grep -q "missing packages: tandem-no-such-package" <<<"$out" || fail "--check message: $out"

nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
# Only where user 'nobody' can reach the checkout (not under a 0700 home).
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null &&
   nobody test -x scripts/install-deps.sh 2>/dev/null; then
  out=$(TANDEM_DEPS_EXTRA=tandem-no-such-package nobody scripts/install-deps.sh 2>&1); rc=$?
  [ "$rc" -eq 1 ] || fail "non-root with a missing package exited $rc"
  grep -q "run as root" <<<"$out" || fail "non-root message: $out"
fi
echo "install-deps ok"
