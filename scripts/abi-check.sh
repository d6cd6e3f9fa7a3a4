#!/usr/bin/env bash
# Checks libgrenache's C ABI against the committed baseline ffi/abi/libgrenache.abi.
#   bash scripts/abi-check.sh [--lib PATH] [--header PATH] [--baseline PATH] [--update]
# Defaults: target/debug/libgrenache.so, include/grenache.h, ffi/abi/libgrenache.abi.
#
# What is checked:
#  1. the library's SONAME is libgrenache.so.N (N: SONAME_MAJOR in ffi/build.rs);
#  2. it exports exactly the functions the header declares, and nothing else (ffi/grenache.map);
#  3. the header's ABI (libabigail's abidw dump of ffi/abi/probe.py's probe: every function's
#     signature, every struct's layout, every enum's values) against the baseline with abidiff:
#     - a break (a function removed or changed, a struct or enum changed) with the same SONAME
#       fails: bump SONAME_MAJOR in ffi/build.rs and record the new baseline (--update) in the
#       same commit;
#     - a SONAME that differs from the baseline's fails until the baseline is recorded;
#     - a compatible change (an added function, an added enumerator) fails too, until the
#       baseline records it (--update), so that the baseline always describes the ABI in force.
# --update writes the current ABI to the baseline. Needs: cc, nm, readelf, python3, abidw and
# abidiff (Debian: abigail-tools). Exit status: 0 OK, 1 ABI check failed, 2 usage/tool error.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
lib="$root/target/debug/libgrenache.so"
header="$root/include/grenache.h"
baseline="$root/ffi/abi/libgrenache.abi"
update=0
while [ $# -gt 0 ]; do
  case "$1" in
    --lib) lib="$2"; shift 2 ;;
    --header) header="$2"; shift 2 ;;
    --baseline) baseline="$2"; shift 2 ;;
    --update) update=1; shift ;;
    *) echo "abi-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
for tool in cc nm readelf python3 abidw abidiff; do
  command -v "$tool" >/dev/null || { echo "abi-check: $tool not found (apt-get install abigail-tools gcc binutils python3)" >&2; exit 2; }
done
[ -f "$lib" ] || { echo "abi-check: no library at $lib (cargo build -p grenache-ffi)" >&2; exit 2; }
[ -f "$header" ] || { echo "abi-check: no header at $header" >&2; exit 2; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "abi-check: FAIL: $*" >&2; exit 1; }

# 1. SONAME.
soname="$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')"
[[ "$soname" =~ ^libgrenache\.so\.[0-9]+$ ]] \
  || fail "$lib has SONAME '${soname}', expected libgrenache.so.N (see ffi/build.rs)"

# 2. Exported functions = declared functions.
python3 "$root/ffi/abi/probe.py" "$header" "$tmp/probe.c" "$tmp/declared.txt"
nm -D --defined-only "$lib" | awk '{print $NF}' | sort -u >"$tmp/exported.txt"
extra="$(comm -23 "$tmp/exported.txt" "$tmp/declared.txt")"
missing="$(comm -13 "$tmp/exported.txt" "$tmp/declared.txt")"
[ -z "$extra" ] || fail "$lib exports symbols that the header does not declare (check ffi/grenache.map):
$extra"
[ -z "$missing" ] || fail "the header declares functions that $lib does not export:
$missing"

# 3. The header's ABI, as a shared object with the library's SONAME, dumped by abidw.
# (Compiled from inside $tmp under a relative name: the dump records the source's path.)
(cd "$tmp" && cc -g -O0 -std=c11 -shared -fPIC -Wall -Werror -Wl,-soname,"$soname" -o probe.so probe.c) \
  || { echo "abi-check: the probe of $header does not compile" >&2; exit 2; }
abidw --no-corpus-path --no-comp-dir-path --no-show-locs --no-elf-needed --type-id-style hash \
  --out-file "$tmp/current.abi" "$tmp/probe.so"

if [ "$update" = 1 ]; then
  mkdir -p "$(dirname "$baseline")"
  cp "$tmp/current.abi" "$baseline"
  echo "abi-check: baseline $baseline recorded ($soname, $(wc -l <"$tmp/declared.txt") functions)"
  exit 0
fi
[ -f "$baseline" ] || fail "no baseline at $baseline (record it: bash scripts/abi-check.sh --update)"

base_soname="$(sed -n "1s/.* soname='\([^']*\)'.*/\1/p" "$baseline")"
set +e
abidiff --no-show-locs "$baseline" "$tmp/current.abi" >"$tmp/diff.txt" 2>&1
rc=$?
set -e
if [ $((rc & 3)) -ne 0 ]; then
  cat "$tmp/diff.txt" >&2
  echo "abi-check: abidiff failed (status $rc)" >&2
  exit 2
fi
# A break: anything removed or changed (abidiff's summary lines), or what abidiff itself calls
# incompatible (bit 8 of its status).
broken=0
if [ $((rc & 8)) -ne 0 ] || grep -Eq 'summary: *[1-9][0-9]* Removed|, *[1-9][0-9]* Changed' "$tmp/diff.txt"; then
  broken=1
fi
if [ "$broken" = 1 ]; then
  cat "$tmp/diff.txt" >&2
  if [ "$soname" = "$base_soname" ]; then
    fail "the C ABI broke without a SONAME bump ($soname). Either keep the ABI, or bump SONAME_MAJOR in ffi/build.rs and record the baseline (bash scripts/abi-check.sh --update) in the same commit."
  fi
  fail "the C ABI broke and the SONAME moved from $base_soname to $soname: record the new baseline (bash scripts/abi-check.sh --update) in the same commit."
fi
if [ "$soname" != "$base_soname" ]; then
  fail "the SONAME moved from $base_soname to $soname but the baseline was not recorded (bash scripts/abi-check.sh --update)."
fi
if [ "$rc" -ne 0 ] || ! cmp -s "$baseline" "$tmp/current.abi"; then
  cat "$tmp/diff.txt" >&2
  fail "the C ABI changed compatibly (added functions or values): record it in the baseline (bash scripts/abi-check.sh --update)."
fi
echo "abi-check: OK ($soname, $(wc -l <"$tmp/declared.txt") functions, as in $(basename "$baseline"))"
