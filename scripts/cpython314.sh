#!/usr/bin/env bash
# Builds CPython 3.14 from its release's source tarball and prints the path of its interpreter:
#   bash scripts/cpython314.sh          free-threaded (`--disable-gil`, 3.14t) into target/py314t
#   bash scripts/cpython314.sh --gil    the default build (with the GIL) into target/py314
# PyO3 supports free-threaded builds from 3.14 on, and distributions do not ship one yet, so it
# is built from source (the tarball pinned by its SHA-256; the Debian/Ubuntu `orig` tarball is
# python.org's release file); the build with the GIL is for comparisons (bench/python/run.sh with
# BENCH_PYTHON). About 3 minutes on 2 cores. Needs a C toolchain and the usual CPython build
# headers (installed on Debian when missing).
# Exit status 3: the source could not be downloaded; 1: the build failed.
set -euo pipefail
cd "$(dirname "$0")/.."
version=3.14.4
sha256=d923c51303e38e249136fc1bdf3568d56ecb03214efdef48516176d3d7faaef8
if [ "${1:-}" = "--gil" ]; then
  prefix="$PWD/target/py314"
  python="$prefix/bin/python3.14"
  configure=()
  want_gil=1
else
  prefix="$PWD/target/py314t"
  python="$prefix/bin/python3.14t"
  configure=(--disable-gil)
  want_gil=0
fi
if [ -x "$python" ] && "$python" -c "import sys; sys.exit(int(sys._is_gil_enabled()) != $want_gil)" 2>/dev/null; then
  echo "$python"
  exit 0
fi
urls=(
  "https://www.python.org/ftp/python/$version/Python-$version.tar.xz"
  "http://archive.ubuntu.com/ubuntu/pool/main/p/python3.14/python3.14_$version.orig.tar.xz"
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
got=
for u in "${urls[@]}"; do
  if curl -fsSL --connect-timeout 20 --max-time 300 -o "$work/src.tar.xz" "$u" 2>/dev/null \
    && echo "$sha256  $work/src.tar.xz" | sha256sum -c --quiet 2>/dev/null; then
    got=$u
    break
  fi
done
if [ -z "$got" ]; then
  echo "cpython314: cannot download CPython $version from ${urls[*]}" >&2
  exit 3
fi
if command -v apt-get >/dev/null && ! dpkg -s libssl-dev libffi-dev zlib1g-dev >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq build-essential libssl-dev libffi-dev zlib1g-dev >/dev/null
fi
tar -xf "$work/src.tar.xz" -C "$work"
(
  cd "$work/Python-$version"
  ./configure "${configure[@]}" --prefix="$prefix" --with-ensurepip=install >"$work/build.log" 2>&1 \
    && make -j"$(nproc)" >>"$work/build.log" 2>&1 \
    && make install >>"$work/build.log" 2>&1
) || { tail -30 "$work/build.log" >&2; echo "cpython314: the build failed" >&2; exit 1; }
echo "$python"
