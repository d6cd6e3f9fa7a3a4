#!/usr/bin/env bash
# The Python face's benchmark in one command: builds the Python module (release, into the venv
# target/pybench), the Rust server and load client (release), installs the Node reference
# (tests/interop), then runs bench/python/bench.py with the given options (--seq, --rounds,
# --only client|server). BENCH_PYTHON names another interpreter for the Python peers (the same
# abi3 wheel; venv target/pybench-<version>), e.g. a CPython 3.14 built by
# `bash scripts/cpython314.sh --gil`.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_INCREMENTAL=0
python=${BENCH_PYTHON:-python3}
venv=target/pybench
if [ -n "${BENCH_PYTHON:-}" ]; then
  venv=target/pybench-$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check 'maturin==1.16.0'
# A wheel installed into the venv (not `maturin develop`, whose editable install would put the
# release module into the source tree, where the test venv's debug module lives).
rm -rf "$venv/wheels"
(cd bindings/python && "$PWD/../../$venv/bin/maturin" build --release --locked --quiet -i "$PWD/../../$venv/bin/python" -o "$PWD/../../$venv/wheels")
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$venv"/wheels/*.whl
cargo build --release --locked -p grenache-cli --bin grenache -p grenache-bench --bin rpc_load
if [ ! -d tests/interop/node_modules ]; then
  (cd tests/interop && npm ci --no-audit --no-fund)
fi
exec "$venv/bin/python" bench/python/bench.py "$@"
