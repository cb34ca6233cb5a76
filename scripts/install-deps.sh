#!/usr/bin/env bash
# Installs the Debian packages Tandem builds and tests against.
#
# Idempotent: prints nothing and exits 0 when everything is present. When
# something is missing it installs it with apt-get (needs root); when not root
# it names what is missing and exits 1.
#
# Usage: scripts/install-deps.sh [--check]
#   --check   only report; exit 1 if anything is missing.
set -euo pipefail

# Build and link dependencies.
PKGS=(
  build-essential pkg-config
  libuv1-dev
  libzmq3-dev
  libucx-dev ucx-utils
  libprotobuf-c-dev protobuf-c-compiler
  libcjson-dev
  libpcre2-dev
  node-llhttp
  libnghttp2-dev
  # Test-time tools: real peers and servers used by the test suite.
  redis-server
  nghttp2-client
  python3-venv
  # gRPC reference client for the gRPC API tests (run with /usr/bin/python3).
  python3-grpcio python3-protobuf protobuf-compiler
  # YAML parser for the deployment-manifest checks.
  python3-yaml
)

# Extra package names (space-separated), e.g. for a test of the error path.
# shellcheck disable=SC2206
PKGS+=(${TANDEM_DEPS_EXTRA:-})

missing=()
for p in "${PKGS[@]}"; do
  # dpkg-query prints "install ok installed" for a fully installed package.
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$st" = "install ok installed" ] || missing+=("$p")
done

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "${1:-}" = "--check" ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root (sudo $0) or: apt-get install ${missing[*]}" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when they are absent or older than a day.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
  apt-get update -qq >/dev/null
fi
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  echo "install-deps: apt-get install failed for: ${missing[*]}" >&2
  exit 1
fi
