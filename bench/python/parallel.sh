#!/usr/bin/env bash
# Plain handlers under the GIL and on free-threaded CPython, in one run: builds the Python module
# (release) for this machine's python3 (venv target/pybench) and for a free-threaded 3.14
# (`$PYTHON_FT`, or built by scripts/cpython314.sh; venv target/pyft), then runs
# bench/python/parallel.py with each and prints both lines. Options go to parallel.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_INCREMENTAL=0
ft=${PYTHON_FT:-$(bash scripts/cpython314.sh)}
build() { # venv interpreter
  local venv=$1
  if [ ! -x "$venv/bin/python" ]; then
    "$2" -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'maturin==1.16.0'
  rm -rf "$venv/wheels"
  (cd bindings/python && "$PWD/../../$venv/bin/maturin" build --release --locked --quiet -i "$PWD/../../$venv/bin/python" -o "$PWD/../../$venv/wheels")
  "$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$venv"/wheels/*.whl
}
build target/pybench python3
build target/pyft "$ft"
for venv in target/pybench target/pyft; do
  "$venv/bin/python" bench/python/parallel.py "$@"
done
