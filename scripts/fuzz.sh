#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a fixed time, one after the other, each in one process (no
# -jobs/-workers: the machine may be shared).
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Installs cargo-fuzz (pinned, into target/tools) when it is missing. cargo-fuzz needs a nightly
# compiler for -Zsanitizer; none is installed here, so the stable toolchain is told to accept
# nightly flags with RUSTC_BOOTSTRAP=1 (a documented escape hatch of rustc, meant for building the
# compiler itself; acceptable for a fuzzing build that never ships).
#
# The corpus lives in fuzz/corpus/<target> (generated, not committed); the seeds committed in
# fuzz/seeds/<target> are read too. Crashes land in fuzz/artifacts/<target> and make this fail.
# Exec counts and coverage are printed at the end of each run ("Done N runs in S second(s)").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-60}
shift || true
TOOLS=$ROOT/target/tools
export PATH=$TOOLS/bin:$PATH
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --version 0.13.2 --locked --root "$TOOLS"
fi
export RUSTC_BOOTSTRAP=1
# A build dir of its own: the instrumented build shares nothing with the normal one.
export CARGO_TARGET_DIR=$ROOT/target/fuzz
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <(cd fuzz && cargo fuzz list)
fi
cd fuzz
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "seeds/$t"
  echo "== $t: $SECS s"
  cargo fuzz build -O "$t"
  cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$SECS" -max_len=4096 -print_final_stats=1 2>&1 |
    grep -E "^(Done|stat::|INFO: Seed|==[0-9]+==|SUMMARY|artifact_prefix)|panicked|Test unit written" || true
  if [ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]; then
    echo "!! $t: crash artifacts in fuzz/artifacts/$t" >&2
    exit 1
  fi
done
