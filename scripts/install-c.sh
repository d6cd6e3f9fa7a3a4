#!/usr/bin/env bash
# Installs the C library (libgrenache) under a prefix, laid out as cargo-c's `cargo cinstall` does:
#
#   <libdir>/libgrenache.so.<version>           the shared library (SONAME libgrenache.so.<major>)
#   <libdir>/libgrenache.so.<major>             -> libgrenache.so.<version>  (what programs load)
#   <libdir>/libgrenache.so                     -> libgrenache.so.<version>  (what -lgrenache finds)
#   <libdir>/libgrenache.a                      the static library
#   <libdir>/pkgconfig/grenache.pc              with the installed paths
#   <includedir>/grenache/grenache.h            the header (Cflags: -I<includedir>/grenache)
#
#   bash scripts/install-c.sh [--prefix DIR] [--destdir DIR] [--libdir DIR] [--includedir DIR]
#                             [--profile NAME] [--no-build]
#
# --prefix      where the files belong at run time (default /usr/local); written into grenache.pc
# --destdir     a staging root prepended to every path (packaging), as `make install DESTDIR=`
# --libdir      default <prefix>/lib; --includedir default <prefix>/include
# --profile     the cargo profile whose build is installed (default release: `cargo build
#               --release -p grenache-ffi`, run first unless --no-build)
#
# Nothing is half-installed: every destination is checked to be writable first (a read-only or
# foreign prefix is refused with a message, before anything is written), each file is copied next
# to its place under a temporary name, and all are renamed into place only once every copy
# succeeded; on any failure the temporary files and the directories this run created are removed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

prefix=/usr/local
destdir=""
libdir=""
includedir=""
profile=release
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --destdir) destdir="$2"; shift 2 ;;
    --libdir) libdir="$2"; shift 2 ;;
    --includedir) includedir="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "install-c: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$prefix" in /*) ;; *) echo "install-c: --prefix must be an absolute path, not '$prefix'" >&2; exit 2 ;; esac
libdir="${libdir:-$prefix/lib}"
includedir="${includedir:-$prefix/include}"

if [ "$build" = 1 ]; then
  (cd "$root" && cargo build --locked --profile "$profile" -p grenache-ffi)
fi
dir="$profile"; [ "$profile" = dev ] && dir=debug
out="${CARGO_TARGET_DIR:-$root/target}/$dir"
for f in libgrenache.so libgrenache.a; do
  [ -f "$out/$f" ] || { echo "install-c: $out/$f is missing (cargo build --profile $profile -p grenache-ffi)" >&2; exit 2; }
done
header="$root/include/grenache.h"

version="$(sed -n 's/^#define GRENACHE_VERSION_STRING "\(.*\)"/\1/p' "$header")"
soname="$(readelf -d "$out/libgrenache.so" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')"
[[ "$soname" =~ ^libgrenache\.so\.[0-9]+$ ]] || { echo "install-c: $out/libgrenache.so has no SONAME libgrenache.so.N (built before ffi/build.rs set it?)" >&2; exit 2; }
[ -n "$version" ] || { echo "install-c: no GRENACHE_VERSION_STRING in $header" >&2; exit 2; }
real="libgrenache.so.$version"

# Destinations: (directory, name, source or symlink target).
lib_d="$destdir$libdir"
pc_d="$destdir$libdir/pkgconfig"
inc_d="$destdir$includedir/grenache"

# 1. Every destination directory must be creatable and writable, checked before writing anything.
writable_dir() {
  # The directory itself if it exists, else its nearest existing ancestor, must be writable.
  local d="$1"
  while [ ! -e "$d" ]; do d="$(dirname "$d")"; done
  if [ ! -d "$d" ]; then
    echo "install-c: cannot install into $1: $d is not a directory" >&2; return 1
  fi
  if [ ! -w "$d" ] || [ ! -x "$d" ]; then
    local why="permission denied"
    if touch "$d/.grenache-install-probe.$$" 2>/dev/null; then rm -f "$d/.grenache-install-probe.$$"; return 0; fi
    grep -qs " $(stat -c %m "$d" 2>/dev/null) [^ ]* ro[, ]" /proc/mounts && why="read-only file system"
    echo "install-c: cannot install into $1: $d is not writable ($why)." >&2
    echo "install-c: choose another --prefix (e.g. --prefix \$HOME/.local) or run as a user who may write there; nothing was installed." >&2
    return 1
  fi
}
for d in "$lib_d" "$pc_d" "$inc_d"; do writable_dir "$d" || exit 1; done

# 2. Stage every file beside its destination under a temporary name; undo all on failure.
created=()
staged=()
cleanup() {
  local f
  for f in "${staged[@]}"; do rm -f "$f"; done
  # Directories this run created, deepest first, if they are still empty.
  for ((i=${#created[@]}-1; i>=0; i--)); do rmdir "${created[$i]}" 2>/dev/null || true; done
}
trap 'status=$?; if [ $status -ne 0 ]; then cleanup; echo "install-c: failed; nothing was installed." >&2; fi' EXIT

mkdirs() {
  local d="$1" missing=()
  while [ ! -d "$d" ]; do missing+=("$d"); d="$(dirname "$d")"; done
  for ((i=${#missing[@]}-1; i>=0; i--)); do mkdir "${missing[$i]}" && created+=("${missing[$i]}"); done
}
for d in "$lib_d" "$pc_d" "$inc_d"; do mkdirs "$d"; done

tmp=".grenache-install.$$"
stage_file() { # source, destination dir, name, mode
  install -m "$4" "$1" "$2/$3$tmp"
  staged+=("$2/$3$tmp")
}
stage_link() { # target, destination dir, name
  ln -sfn "$1" "$2/$3$tmp"
  staged+=("$2/$3$tmp")
}

pc="$(mktemp)"
cat >"$pc" <<EOF
# Installed by scripts/install-c.sh (grenache-rs).
prefix=$prefix
exec_prefix=\${prefix}
libdir=$libdir
includedir=$includedir

Name: grenache
Description: Grenache (DHT-based microservices) C library
Version: $version
Libs: -L\${libdir} -lgrenache
Libs.private: -lpthread -ldl -lm
Cflags: -I\${includedir}/grenache
EOF

stage_file "$out/libgrenache.so" "$lib_d" "$real" 0755
stage_link "$real" "$lib_d" "$soname"
stage_link "$real" "$lib_d" "libgrenache.so"
stage_file "$out/libgrenache.a" "$lib_d" "libgrenache.a" 0644
stage_file "$pc" "$pc_d" "grenache.pc" 0644
stage_file "$header" "$inc_d" "grenache.h" 0644
rm -f "$pc"

# 3. Everything is in place under temporary names: rename each onto its final name.
for f in "${staged[@]}"; do mv -fT "$f" "${f%"$tmp"}"; done
staged=()
echo "install-c: libgrenache $version ($soname) installed under $destdir$prefix"
printf '  %s\n' "$lib_d/$real" "$lib_d/$soname -> $real" "$lib_d/libgrenache.so -> $real" \
  "$lib_d/libgrenache.a" "$pc_d/grenache.pc" "$inc_d/grenache.h"
