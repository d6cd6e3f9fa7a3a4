#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, then builds and runs every test.
#   bash scripts/test.sh
# Environment: GRENACHE_TEST_JOBS (test threads, default: number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."
# One clean build: incremental caches would double the target directory for no gain here.
export CARGO_INCREMENTAL=0

log() { printf '\n==> %s\n' "$*"; }

apt_install() {
  # Installs Debian packages that are missing (root on CI and dev machines).
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# 1. System tools: Node.js and npm (Node reference peers), openssl (test certificates).
command -v node >/dev/null 2>&1 || apt_install nodejs npm
command -v npm >/dev/null 2>&1 || apt_install npm
command -v openssl >/dev/null 2>&1 || apt_install openssl
# C ABI examples (ffi/tests/c_examples.rs): a C compiler, pkg-config, valgrind.
apt_install gcc g++ libc6-dev pkg-config valgrind ruby ruby-ffi
# The split-network test (tests/tests/dht_partition.rs) and the IPv6-only hosts test
# (tests/tests/dht_ipv6_netns.rs): network namespaces and iptables.
apt_install iproute2 iptables
# The C ABI check (scripts/abi-check.sh, ffi/tests/abi.rs): libabigail's abidw and abidiff.
apt_install abigail-tools

# 2. The Node.js reference peers, pinned in tests/interop/package-lock.json.
log "npm ci (Node reference peers)"
(cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)

# 2b. The real libzmq for the ZeroMQ interop tests (tests/tests/zmq_interop.rs): pyzmq from PyPI
#     (its wheel bundles libzmq 4.3) in a venv of its own.
log "pyzmq (libzmq peers)"
if [ ! -x target/zmqenv/bin/python ]; then
  mkdir -p target
  python3 -m venv target/zmqenv 2>/dev/null || { apt_install python3-venv && python3 -m venv target/zmqenv; }
fi
target/zmqenv/bin/pip install --quiet --disable-pip-version-check 'pyzmq==27.1.0'

# Steps whose failure fails the run at the end, after the Rust tests have run too.
failed=()

# 3. Build everything (tests, examples, benches compile too).
log "cargo build"
cargo build --workspace --all-targets --locked

# Formatting (rustfmt.toml) and lints: the tree stays rustfmt- and clippy-clean.
log "cargo fmt --check, cargo clippy"
if cargo fmt --all --check && cargo clippy --workspace --all-targets --locked --quiet -- -D warnings; then
  echo "fmt, clippy: ok"
else
  failed+=("fmt or clippy")
fi

# The C header is generated from ffi/src: the committed one must be what the sources give.
log "include/grenache.h"
bash scripts/gen-header.sh --verify

# 4. The runnable Rust examples (the C and Ruby examples run inside the test suite).
log "examples"
for ex in quickstart ws_ssl_whitelist rolling_restart; do
  cargo run --quiet --locked --example "$ex" >/dev/null
  echo "example $ex: ok"
done

# 5. The Python binding (bindings/python): a venv with maturin, the module built into it, its
#    tests (against real Grapes and the Node peers) and its example. A failure here fails the
#    run, after the Rust tests below have run too.
log "python binding"
if python_binding() {
  local venv=target/pyenv
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
  fi
  # (errexit is off inside an `if` condition: each step checks its own status.)
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'maturin==1.16.0' || return 1
  (cd bindings/python && VIRTUAL_ENV="$PWD/../../$venv" PATH="$PWD/../../$venv/bin:$PATH" maturin develop --locked --quiet) || return 1
  timeout 300 "$venv/bin/python" -m unittest discover -s bindings/python/tests || return 1
  timeout 120 "$venv/bin/python" examples/python/rpc_test.py || return 1
}; python_binding; then echo "python binding: ok"; else failed+=("python binding"); fi

# 5b. The same module on free-threaded CPython 3.14t (no GIL; built from source by
#     scripts/cpython314.sh, about 3 minutes): the whole Python suite again, with
#     tests/test_free_threaded.py no longer skipped. Only a source download that fails (no
#     network) skips it; a build or test failure fails the run.
log "python binding, free-threaded"
if ft_python=$(bash scripts/cpython314.sh); then
  if python_ft() {
    local venv=target/pyft
    if [ ! -x "$venv/bin/python" ]; then "$ft_python" -m venv "$venv" || return 1; fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'maturin==1.16.0' || return 1
    (cd bindings/python && VIRTUAL_ENV="$PWD/../../$venv" PATH="$PWD/../../$venv/bin:$PATH" maturin develop --locked --quiet) || return 1
    timeout 300 "$venv/bin/python" -m unittest discover -s bindings/python/tests || return 1
  }; python_ft; then echo "python binding, free-threaded: ok"; else failed+=("python binding, free-threaded"); fi
elif [ $? -eq 3 ]; then
  echo "python binding, free-threaded: skipped (the CPython source could not be downloaded)"
else
  failed+=("python binding, free-threaded (building CPython)")
fi

# 6. The Node binding (bindings/node, grenache-native): the addon built above, its tests (with
#    the reference packages from tests/interop in the same process), the reference packages' own
#    mocha suites against the drop-in modules (installs mocha from npm), the packed tarball
#    installed into an empty directory, and the examples (the reference README's examples run
#    unchanged through the alias packages).
log "node binding"
if cp target/debug/libgrenache_node.so bindings/node/grenache.node \
  && cp target/debug/libgrenache_node.so bindings/node/grenache.linux-x64-gnu.node \
  && timeout 300 node --test --test-concurrency=1 bindings/node/test/ \
  && timeout 600 node bindings/node/test-reference.js \
  && timeout 300 node bindings/node/test-pack.js \
  && timeout 300 node examples/node/dropin/run.js \
  && timeout 120 node examples/node/rpc_test.js; then
  echo "node binding: ok"
else
  failed+=("node binding")
fi

# 7. The installable artifacts (scripts/test-install.sh): libgrenache under a prefix, the wheel,
#    the sdist, the gem and the .deb, built once (cargo profile `packaging`), each installed into
#    a fresh place and run from there. A failure fails the run, after the tests below.
log "install: C library, wheel, sdist, gem, .deb"
if bash scripts/test-install.sh; then echo "install: ok"; else failed+=("install"); fi

# 8. Tests. nextest when available (one process per test), else cargo test.
jobs="${GRENACHE_TEST_JOBS:-$(nproc)}"
if cargo nextest --version >/dev/null 2>&1; then
  log "doc tests"
  cargo test --workspace --doc --locked
  # Last, so that its summary line closes the output.
  log "cargo nextest run"
  cargo nextest run --workspace --locked --no-fail-fast --test-threads "$jobs"
else
  log "cargo test"
  cargo test --workspace --locked --no-fail-fast -- --test-threads "$jobs"
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
