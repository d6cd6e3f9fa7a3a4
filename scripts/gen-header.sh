#!/usr/bin/env bash
# Generates include/grenache.h from the C ABI's sources (ffi/src) with cbindgen.
#   scripts/gen-header.sh            rewrites include/grenache.h when it changed
#   scripts/gen-header.sh --verify   fails when the committed header is stale (scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet --locked -p grenache-header --bin gen-header -- "$@"
