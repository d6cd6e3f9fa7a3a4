#!/usr/bin/env bash
# The Python face's benchmark in one command: builds the Python module (release, into the venv
# target/pybench), the Rust server and load client (release), installs the Node reference
# (tests/interop), then runs bench/python/bench.py with the given options (--seq, --rounds,
# --only client|server).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_INCREMENTAL=0
venv=target/pybench
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check 'maturin==1.16.0'
(cd bindings/python && VIRTUAL_ENV="$PWD/../../$venv" PATH="$PWD/../../$venv/bin:$PATH" maturin develop --release --locked --quiet)
cargo build --release --locked -p grenache-cli --bin grenache -p grenache-bench --bin rpc_load
if [ ! -d tests/interop/node_modules ]; then
  (cd tests/interop && npm ci --no-audit --no-fund)
fi
exec "$venv/bin/python" bench/python/bench.py "$@"
