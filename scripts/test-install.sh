#!/usr/bin/env bash
# Builds every installable artifact once and installs each into a fresh place, then runs programs
# against the installed copy alone:
#   C       scripts/install-c.sh into a temporary prefix; the ABI check on the installed library;
#           C examples built with `pkg-config --cflags --libs grenache` alone; a read-only prefix
#           refused with nothing installed
#   Python  the abi3 wheel (maturin, its manylinux check, `auditwheel show`) into a fresh venv
#           with `cargo` off PATH: import and examples/python/rpc_test.py; the sdist built by pip
#           where Rust is present; an older Python refused by pip
#   Ruby    the gem into an empty GEM_HOME, finding libgrenache through pkg-config; the Ruby
#           examples; a clear error without libgrenache
#   Debian  `apt-get install ./grenache_*.deb`; the grenache-grape unit's ExecStart run as its
#           user with flags from a copy of its EnvironmentFile, answering /lookup; a C example and
#           the Ruby gem against the packaged library with no search path set; then purged
#
#   bash scripts/test-install.sh
# Environment: GRENACHE_PACKAGING_PROFILE (cargo profile, default `packaging`: see Cargo.toml).
# Everything it installs goes under one temporary directory, removed at exit, except the .deb,
# which is purged at exit (and the system user it creates, removed if it did not exist before).
# Last line: "N passed, N failed"; exit status 1 if any check failed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
profile="${GRENACHE_PACKAGING_PROFILE:-packaging}"
artifacts="$root/target/$profile"
version="$(sed -n 's/^#define GRENACHE_VERSION_STRING "\(.*\)"/\1/p' include/grenache.h)"

log() { printf '\n==> %s\n' "$*"; }
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
apt_install gcc libc6-dev pkg-config dpkg-dev binutils abigail-tools ruby ruby-ffi python3-venv

work="$(mktemp -d /tmp/grenache-install.XXXXXX)"
deb_installed=0
user_existed=0
getent passwd grenache >/dev/null && user_existed=1
# The checks run in subshells: the processes they start and the mount they make are recorded
# in files, for the cleanup.
cleanup() {
  local p
  if [ -f "$work/pids" ]; then
    while read -r p; do kill "$p" 2>/dev/null || true; done <"$work/pids"
    sleep 0.5
    while read -r p; do kill -9 "$p" 2>/dev/null || true; done <"$work/pids"
  fi
  [ -f "$work/mount" ] && umount "$(cat "$work/mount")" 2>/dev/null
  if [ "$deb_installed" = 1 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq grenache >/dev/null 2>&1 || true
    [ "$user_existed" = 0 ] && { userdel grenache 2>/dev/null || true; }
  fi
  rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
failures=()
# check NAME FUNCTION: runs FUNCTION in a subshell with errexit, so that its first failing
# command fails it, and records the result. (Not inside an `if`: bash turns errexit off for
# everything run from a condition, subshells included.)
check() {
  local name="$1" rc; shift
  local t0=$SECONDS
  set +e
  ( set -eEuo pipefail; trap 'echo "  failed at line $LINENO: $BASH_COMMAND" >&2' ERR; "$@" )
  rc=$?
  set -e
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1)); echo "ok: $name ($((SECONDS - t0)) s)"
  else
    failed=$((failed + 1)); failures+=("$name"); echo "FAILED: $name ($((SECONDS - t0)) s)"
  fi
  return 0
}
expect_in() { # TEXT NEEDLE WHAT
  if ! grep -qF -- "$2" <<<"$1"; then
    echo "expected '$2' in $3:"; printf '%s\n' "$1"; return 1
  fi
}
# (Pipelines end in `grep PATTERN >/dev/null`, not `grep -q`: -q stops reading at the first match
# and, under pipefail, the writer's SIGPIPE would fail the pipeline.)
# A PATH without cargo, rustc or rustup: system directories only.
NO_RUST_PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin

# ------------------------------------------------------------------------------------------------
log "build: libgrenache, grape and grenache (cargo --profile $profile)"
t0=$SECONDS
cargo build --locked --profile "$profile" -p grenache-ffi -p grenache-cli
echo "cargo build: $((SECONDS - t0)) s"

log "build: the wheel and the sdist (maturin)"
venv_build="$root/target/pyenv"
[ -x "$venv_build/bin/python" ] || python3 -m venv "$venv_build"
"$venv_build/bin/pip" install --quiet --disable-pip-version-check 'maturin==1.16.0' 'auditwheel==6.8.2'
t0=$SECONDS
(cd bindings/python && "$venv_build/bin/maturin" build --locked --profile "$profile" \
  --auditwheel check --out "$work/wheels" --quiet)
(cd bindings/python && "$venv_build/bin/maturin" sdist --out "$work/sdist" >/dev/null 2>&1)
echo "maturin: $((SECONDS - t0)) s"
wheel="$(ls "$work"/wheels/grenache-"$version"-*.whl)"
sdist="$(ls "$work"/sdist/grenache-"$version".tar.gz)"

log "build: the gem and the .deb"
(cd bindings/ruby && gem build --quiet grenache-native.gemspec --output "$work/grenache-native-$version.gem" >/dev/null)
gemfile="$work/grenache-native-$version.gem"
deb="$(bash scripts/build-deb.sh --no-build --profile "$profile" --out "$work/deb" | tail -1)"
ls -l "$wheel" "$sdist" "$gemfile" "$deb"

# ------------------------------------------------------------------------------------------------
log "C: install into a fresh prefix, build the examples with pkg-config alone"
prefix="$work/prefix"
c_install() {
  bash scripts/install-c.sh --no-build --profile "$profile" --prefix "$prefix"
  local lib="$prefix/lib"
  [ "$(readlink "$lib/libgrenache.so.1")" = "libgrenache.so.$version" ]
  [ "$(readlink "$lib/libgrenache.so")" = "libgrenache.so.$version" ]
  readelf -d "$lib/libgrenache.so.$version" | grep 'Library soname: \[libgrenache.so.1\]' >/dev/null
  [ -f "$lib/libgrenache.a" ]
  [ -f "$prefix/include/grenache/grenache.h" ]
  grep -qx "libdir=$lib" "$lib/pkgconfig/grenache.pc"
}
check "C library installed under a prefix (cargo-c layout)" c_install

c_examples() {
  local bin="$work/c-bin" flags
  mkdir -p "$bin"
  flags="$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs grenache)"
  expect_in "$flags" "-I$prefix/include/grenache" "pkg-config --cflags"
  for ex in basics local_network; do
    # Copied out of the source tree so that only the installed header can be found.
    cp "examples/c/$ex.c" examples/c/common.h "$bin/"
    # shellcheck disable=SC2086
    cc -std=c11 -Wall -Wextra -Werror -pedantic -pthread "$bin/$ex.c" -o "$bin/$ex" $flags
    # The installed copy is the one loaded (a prefix outside the loader's path: LD_LIBRARY_PATH).
    LD_LIBRARY_PATH="$prefix/lib" ldd "$bin/$ex" | grep "libgrenache.so.1 => $prefix/lib/libgrenache.so.1" >/dev/null
    LD_LIBRARY_PATH="$prefix/lib" timeout 120 "$bin/$ex" >"$bin/$ex.out" 2>&1 \
      || { cat "$bin/$ex.out"; return 1; }
    echo "  $ex: $(tail -1 "$bin/$ex.out")"
  done
}
check "C examples built with pkg-config against the installed copy" c_examples

check "ABI check on the installed library" \
  bash scripts/abi-check.sh --lib "$prefix/lib/libgrenache.so.1" --header "$prefix/include/grenache/grenache.h"

c_readonly() {
  local ro="$work/ro" msg
  mkdir -p "$ro"
  if mount -t tmpfs -o ro,size=1m tmpfs "$ro" 2>/dev/null; then
    echo "$ro" >"$work/mount"
    if msg="$(bash scripts/install-c.sh --no-build --profile "$profile" --prefix "$ro/usr" 2>&1)"; then
      echo "install into a read-only prefix succeeded"; return 1
    fi
    umount "$ro" && rm -f "$work/mount"
  else
    # No mount here (a container without CAP_SYS_ADMIN): a prefix this user may not write.
    chmod 0755 "$ro"
    if msg="$(setpriv --reuid=nobody --regid=nogroup --clear-groups \
      bash scripts/install-c.sh --no-build --profile "$profile" --prefix "$ro/usr" 2>&1)"; then
      echo "install into an unwritable prefix succeeded"; return 1
    fi
  fi
  expect_in "$msg" "is not writable" "the install's message"
  expect_in "$msg" "nothing was installed" "the install's message"
  echo "  $(head -1 <<<"$msg")"
  [ -z "$(find "$ro" -mindepth 1 -print -quit)" ] || { echo "left behind:"; find "$ro"; return 1; }
}
check "C install into a read-only prefix refused, nothing left" c_readonly

# ------------------------------------------------------------------------------------------------
log "Python: the wheel into a fresh venv, cargo off PATH"
py_wheel() {
  local venv="$work/venv" out
  "$venv_build/bin/auditwheel" show "$wheel" >"$work/auditwheel.txt"
  expect_in "$(tr -s ' \n' ' ' <"$work/auditwheel.txt")" "is consistent with the following platform tag" "auditwheel show"
  grep -q 'manylinux_2_[0-9]*_x86_64' "$work/auditwheel.txt"
  grep -Eq 'cp39-abi3-manylinux_2_[0-9]+_x86_64\.whl$' <<<"$wheel" || { echo "unexpected wheel tag: $wheel"; return 1; }
  echo "  $(basename "$wheel")"
  python3 -m venv "$venv"
  # From here on, the commands see no Rust toolchain.
  if env PATH="$venv/bin:$NO_RUST_PATH" sh -c 'command -v cargo || command -v rustc'; then
    echo "cargo is still on PATH"; return 1
  fi
  env -u CARGO_TARGET_DIR PATH="$venv/bin:$NO_RUST_PATH" \
    pip install --quiet --disable-pip-version-check --no-index "$wheel"
  # Run from an empty directory, so that only the installed package can be imported.
  mkdir -p "$work/pyrun"
  out="$(cd "$work/pyrun" && env PATH="$venv/bin:$NO_RUST_PATH" python -c \
    'import grenache, os; print(os.path.dirname(grenache.__file__)); print(grenache.version())')"
  expect_in "$out" "$venv/lib/" "the imported package's path"
  out="$(cd "$work/pyrun" && env PATH="$venv/bin:$NO_RUST_PATH" timeout 120 python "$root/examples/python/rpc_test.py" 2>&1)" \
    || { echo "$out"; return 1; }
  echo "  rpc_test.py: $(tail -1 <<<"$out")"
}
check "Python wheel installed without Rust, example runs" py_wheel

py_sdist() {
  local venv="$work/venv-sdist" out
  mkdir -p "$work/pyrun"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check maturin==1.16.0
  # pip builds the sdist with maturin and cargo; in this target dir and profile, the
  # dependencies built above are reused. Cargo keys the workspace's own crates by their path in
  # the workspace, which is the same in the sdist: their fingerprints are removed so that
  # grenache-core and the module really compile from the sdist's files (a file missing from the
  # sdist fails here). (Not --locked: the sdist's workspace holds two crates, so cargo prunes its
  # copy of Cargo.lock; the versions stay the locked ones.)
  rm -rf "$artifacts"/.fingerprint/grenache-core-* "$artifacts"/.fingerprint/grenache-python-*
  env PATH="$venv/bin:$PATH" CARGO_TARGET_DIR="$root/target" MATURIN_PEP517_ARGS="--profile $profile" \
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-build-isolation --no-cache-dir "$sdist"
  out="$(cd "$work/pyrun" && "$venv/bin/python" -c \
    'import grenache
with grenache.Grape() as g:
    print("sdist ok", grenache.version(), "grape api port", g.api_port)' 2>&1)" || { echo "$out"; return 1; }
  echo "  $out"
  expect_in "$out" "sdist ok" "the sdist install's run"
}
check "Python sdist built and installed by pip" py_sdist

py_old() {
  local old="" v out
  for v in /root/.pyenv/versions/3.8*/bin/python3.8 "$(command -v python3.8 || true)"; do
    [ -x "$v" ] && { old="$v"; break; }
  done
  if [ -z "$old" ]; then echo "  skipped: no Python older than 3.9 on this machine"; return 0; fi
  mkdir -p "$work/pyrun"
  "$old" -m venv "$work/venv-old"
  if out="$("$work/venv-old/bin/pip" install --disable-pip-version-check --no-index "$wheel" 2>&1)"; then
    echo "the wheel installed on $("$old" --version)"; return 1
  fi
  expect_in "$out" "is not a supported wheel on this platform" "pip's answer for the wheel"
  echo "  wheel on $("$old" --version 2>&1): $(grep ERROR <<<"$out" | head -1)"
  # The sdist: pip asks the build backend (maturin, in that venv) for the metadata, then refuses.
  "$work/venv-old/bin/pip" install --quiet --disable-pip-version-check 'maturin==1.16.0'
  if out="$(env PATH="$work/venv-old/bin:$PATH" "$work/venv-old/bin/pip" install --disable-pip-version-check \
    --no-index --no-build-isolation "$sdist" 2>&1)"; then
    echo "the sdist installed on $("$old" --version)"; return 1
  fi
  expect_in "$out" "requires a different Python" "pip's answer for the sdist"
  echo "  sdist: $(grep ERROR <<<"$out" | head -1)"
  # Nothing half-installed: the package is not importable.
  ! (cd "$work/pyrun" && "$work/venv-old/bin/python" -c 'import grenache' 2>/dev/null)
}
check "Python older than 3.9 refused by pip, nothing installed" py_old

# ------------------------------------------------------------------------------------------------
log "Ruby: the gem into an empty GEM_HOME, libgrenache found through pkg-config"
gem_home="$work/gems"
ruby_examples="$work/ruby-examples"
rb() { # runs a command with the fresh GEM_HOME (beside Debian's gems: ruby-ffi), from a dir of its own
  (cd "$ruby_examples" && env -u GRENACHE_LIB -u GEM_PATH GEM_HOME="$gem_home" "$@")
}
ruby_gem() {
  local out
  mkdir -p "$gem_home" "$ruby_examples"
  # The ffi dependency comes from Debian's ruby-ffi (the default gem path); nothing is fetched.
  GEM_HOME="$gem_home" gem install --local --no-document "$gemfile"
  [ -d "$gem_home/gems/grenache-native-$version" ]
  # The examples, requiring the installed gem instead of the source tree.
  for f in examples/ruby/*.rb; do
    sed "s|^require_relative '../../bindings/ruby/lib/grenache'$|require 'grenache'|" "$f" >"$ruby_examples/$(basename "$f")"
    grep -q "^require 'grenache'$" "$ruby_examples/$(basename "$f")"
  done
  out="$(rb PKG_CONFIG_PATH="$prefix/lib/pkgconfig" ruby -e 'require "grenache"
puts $LOADED_FEATURES.grep(%r{/grenache\.rb$}).first, Grenache::Native::LIBRARY')"
  expect_in "$out" "$gem_home/gems/grenache-native-$version/lib/grenache.rb" "the loaded gem"
  expect_in "$out" "$prefix/lib/libgrenache.so.1" "the loaded library"
  out="$(rb PKG_CONFIG_PATH="$prefix/lib/pkgconfig" timeout 120 ruby ws_local_network.rb 2>&1)" \
    || { echo "$out"; return 1; }
  echo "  ws_local_network.rb: $(tail -1 <<<"$out")"
  # The env override, with pkg-config unable to help.
  out="$(rb PKG_CONFIG_PATH=/nonexistent GRENACHE_LIB="$prefix/lib/libgrenache.so.1" ruby -e \
    'require "grenache"; puts Grenache.version')"
  expect_in "$out" "$version" "Grenache.version"
}
check "Ruby gem installed into an empty GEM_HOME, examples run" ruby_gem

ruby_missing() {
  local out
  if out="$(rb PKG_CONFIG_PATH=/nonexistent ruby -e 'require "grenache"' 2>&1)"; then
    echo "require succeeded without libgrenache"; return 1
  fi
  expect_in "$out" "Grenache::LibraryNotFound" "the error"
  expect_in "$out" "GRENACHE_LIB=" "the error"
  echo "  $(grep -m1 -o 'grenache-native: .*' <<<"$out")"
}
check "Ruby gem without libgrenache: a clear error" ruby_missing

# ------------------------------------------------------------------------------------------------
log "Debian: apt-get install ./$(basename "$deb")"
deb_install() {
  if dpkg -s grenache >/dev/null 2>&1; then echo "a grenache package is already installed here"; return 1; fi
  (cd "$(dirname "$deb")" && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "./$(basename "$deb")" >/dev/null)
}
check "Debian package installed with apt-get" deb_install
dpkg -s grenache >/dev/null 2>&1 && deb_installed=1

deb_contents() {
  local ma; ma="$(dpkg-architecture -qDEB_HOST_MULTIARCH)"
  for f in /usr/bin/grape /usr/bin/grenache "/usr/lib/$ma/libgrenache.so.$version" \
    "/usr/lib/$ma/libgrenache.so.1" "/usr/lib/$ma/libgrenache.so" "/usr/lib/$ma/libgrenache.a" \
    "/usr/lib/$ma/pkgconfig/grenache.pc" /usr/include/grenache/grenache.h \
    /lib/systemd/system/grenache-grape.service /etc/default/grenache-grape; do
    dpkg -S "$f" >/dev/null || { echo "not in the package: $f"; return 1; }
  done
  [ "$(id -u grenache)" -ne 0 ]
  [ "$(getent passwd grenache | cut -d: -f7)" = /usr/sbin/nologin ]
  grep -qx 'Restart=on-failure' /lib/systemd/system/grenache-grape.service
  grep -qx 'User=grenache' /lib/systemd/system/grenache-grape.service
  grep -qx 'EnvironmentFile=/etc/default/grenache-grape' /lib/systemd/system/grenache-grape.service
  if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /lib/systemd/system/grenache-grape.service
  fi
  /usr/bin/grenache --version
}
check "Debian package: files, user, unit" deb_contents

# start_unit_grape NAME BOOTSTRAP: runs the unit's ExecStart as systemd would: as its user, with
# its EnvironmentFile (here a copy with ports chosen by the OS, a loopback bind and BOOTSTRAP),
# `${VAR}` as one word and `$VAR` split on spaces. Prints "API_PORT DHT_PORT".
start_unit_grape() {
  local name="$1" bootstrap="$2" unit=/lib/systemd/system/grenache-grape.service
  local env="$work/$name.env" glog="$work/$name.log" api="" dht="" i line=""
  grep -v '^GRAPE_\(DHT_PORT\|API_PORT\|BOOTSTRAP\|OPTS\)=' /etc/default/grenache-grape >"$env"
  printf 'GRAPE_DHT_PORT=0\nGRAPE_API_PORT=0\nGRAPE_BOOTSTRAP=%s\nGRAPE_OPTS=-b 127.0.0.1 --log-level info\n' \
    "$bootstrap" >>"$env"
  mapfile -t argv < <(python3 - "$unit" "$env" <<'EOF'
import re, shlex, sys
unit, envfile = sys.argv[1:3]
env = {}
for line in open(envfile):
    line = line.strip()
    if line and not line.startswith("#"):
        k, _, v = line.partition("=")
        env[k] = v.strip('"')
exec_start = next(l.split("=", 1)[1] for l in open(unit) if l.startswith("ExecStart="))
args = []
for tok in shlex.split(exec_start):
    m = re.fullmatch(r"\$(\w+)", tok)
    if m:
        args += env.get(m.group(1), "").split()
    else:
        args.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), tok))
print("\n".join(args))
EOF
)
  echo "  ExecStart: ${argv[*]}" >&2
  [ "${argv[0]}" = /usr/bin/grape ] || return 1
  NO_COLOR=1 setpriv --reuid=grenache --regid=grenache --init-groups "${argv[@]}" >"$glog" 2>&1 &
  local pid=$!
  echo "$pid" >>"$work/pids"
  for i in $(seq 1 150); do
    line="$(sed 's/\x1b\[[0-9;]*m//g' "$glog" | grep -m1 'grape listening' || true)"
    [ -n "$line" ] && break
    sleep 0.2
  done
  api="$(sed -n 's/.*api=[^ ]*:\([0-9][0-9]*\).*/\1/p' <<<"$line")"
  dht="$(sed -n 's/.*dht=[^ ]*:\([0-9][0-9]*\).*/\1/p' <<<"$line")"
  if [ -z "$api" ] || [ -z "$dht" ]; then echo "the grape did not start:" >&2; cat "$glog" >&2; return 1; fi
  ps -o user= -p "$pid" | grep -x grenache >/dev/null || { echo "the grape does not run as grenache" >&2; return 1; }
  echo "$api $dht"
}

deb_grape() {
  local a b
  a="$(start_unit_grape grape1 "")"
  b="$(start_unit_grape grape2 "127.0.0.1:${a#* }")"
  curl -sS --max-time 10 -X POST -H 'content-type: application/json' \
    -d '{"data":"rpc_test"}' "http://127.0.0.1:${a% *}/lookup" >"$work/lookup.json"
  [ "$(tr -d ' \n' <"$work/lookup.json")" = "[]" ] || { echo "lookup answered: $(cat "$work/lookup.json")"; return 1; }
  echo "  /lookup on 127.0.0.1:${a% *} answered []"
  echo "${a% *} ${b% *}" >"$work/grape.api"
}
check "Packaged grape (the unit's ExecStart) answers /lookup" deb_grape

deb_clients() {
  # A C example and the Ruby examples against the packaged library: no search path, no env.
  local api1 api2 out bin="$work/c-deb" server
  read -r api1 api2 <"$work/grape.api"
  mkdir -p "$bin"
  cp examples/c/basics.c "$bin/"
  # shellcheck disable=SC2046
  cc -std=c11 -Wall -Werror -pthread "$bin/basics.c" -o "$bin/basics" $(pkg-config --cflags --libs grenache)
  ldd "$bin/basics" | grep -E 'libgrenache.so.1 => (/usr)?/lib/' >/dev/null
  timeout 60 "$bin/basics" >/dev/null
  echo "  basics.c against /usr: ok"
  rb env -u PKG_CONFIG_PATH timeout 120 ruby rpc_server.rb "http://127.0.0.1:$api1" 3 >"$work/rb-server.log" 2>&1 &
  # (1 hello + 1 map + 1 bye: the server answers 3 requests, then exits.)
  server=$!
  echo "$server" >>"$work/pids"
  out="$(rb env -u PKG_CONFIG_PATH timeout 120 ruby rpc_client.rb "http://127.0.0.1:$api2" 1 2>&1)" \
    || { echo "$out"; cat "$work/rb-server.log"; return 1; }
  wait "$server" || { cat "$work/rb-server.log"; return 1; }
  expect_in "$out" "world" "rpc_client.rb's output"
  echo "  rpc_server.rb + rpc_client.rb through the packaged grape: $(tail -1 <<<"$out")"
  # The packaged grenache CLI against the packaged grape.
  out="$(timeout 30 /usr/bin/grenache --grape "http://127.0.0.1:$api2" lookup rpc_test 2>&1 || true)"
  echo "  grenache lookup rpc_test (the server has stopped; its announce may linger): $out"
}
check "C and Ruby against the packaged library, through the packaged grape" deb_clients

echo
if [ "$failed" -gt 0 ]; then printf 'failed: %s\n' "${failures[@]}"; fi
echo "install: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
