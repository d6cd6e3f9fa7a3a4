#!/usr/bin/env bash
# Builds the Debian package `grenache` with dpkg-deb:
#   /usr/bin/grape, /usr/bin/grenache
#   libgrenache (so.<version>, so.<major>, so, .a), its header and grenache.pc under /usr
#     (scripts/install-c.sh --destdir; libdir /usr/lib/<multiarch>)
#   the Grape service: /lib/systemd/system/grenache-grape.service, its flags in
#     /etc/default/grenache-grape (a conffile), run as the system user `grenache` (postinst)
#
#   bash scripts/build-deb.sh [--profile NAME] [--no-build] [--out DIR]
#
# --profile  cargo profile of the binaries (default release); --no-build uses what is built;
# --out      where the .deb goes (default target/debian). Prints the .deb's path last.
# Needs dpkg-dev (dpkg-architecture, dpkg-shlibdeps), which Debian's build-essential brings.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
profile=release
build=1
out="$root/target/debian"
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "build-deb: unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ "$build" = 1 ]; then
  (cd "$root" && cargo build --locked --profile "$profile" -p grenache-ffi -p grenache-cli)
fi
dir="$profile"; [ "$profile" = dev ] && dir=debug
bin="${CARGO_TARGET_DIR:-$root/target}/$dir"
for f in grape grenache; do
  [ -x "$bin/$f" ] || { echo "build-deb: $bin/$f is missing (cargo build --profile $profile -p grenache-cli)" >&2; exit 2; }
done

version="$(sed -n 's/^#define GRENACHE_VERSION_STRING "\(.*\)"/\1/p' "$root/include/grenache.h")"
arch="$(dpkg-architecture -qDEB_HOST_ARCH)"
multiarch="$(dpkg-architecture -qDEB_HOST_MULTIARCH)"
debver="$version-1"
soname="$(readelf -d "$bin/libgrenache.so" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pkg="$work/grenache"
mkdir -p "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/default" \
  "$pkg/usr/share/doc/grenache"

install -m 0755 -s "$bin/grape" "$bin/grenache" "$pkg/usr/bin/"
bash "$root/scripts/install-c.sh" --no-build --profile "$profile" --prefix /usr \
  --libdir "/usr/lib/$multiarch" --destdir "$pkg" >/dev/null
strip --strip-unneeded "$pkg/usr/lib/$multiarch/libgrenache.so.$version"
install -m 0644 "$root/packaging/deb/grenache-grape.service" "$pkg/lib/systemd/system/"
install -m 0644 "$root/packaging/deb/grenache-grape.default" "$pkg/etc/default/grenache-grape"
install -m 0755 "$root/packaging/deb/postinst" "$root/packaging/deb/prerm" "$root/packaging/deb/postrm" "$pkg/DEBIAN/"
echo /etc/default/grenache-grape >"$pkg/DEBIAN/conffiles"
# The run-time linker cache is refreshed by dpkg's ldconfig trigger.
echo "activate-noawait ldconfig" >"$pkg/DEBIAN/triggers"
# Other packages linking libgrenache depend on this one (dpkg-shlibdeps reads this).
echo "libgrenache ${soname##*.so.} grenache (>= $version)" >"$pkg/DEBIAN/shlibs"
{
  echo "grenache-rs $version: the Grape and grenache binaries, libgrenache, the Grape service."
  echo "License: MIT. Source and documentation: https://example.invalid/grenache-rs"
} >"$pkg/usr/share/doc/grenache/README.Debian"
cp "$root/packaging/deb/copyright" "$pkg/usr/share/doc/grenache/copyright"

# Depends: from the ELF files' needs, as Debian's own tooling computes it.
mkdir -p "$work/src/debian"
printf 'Source: grenache\n\nPackage: grenache\nArchitecture: any\n' >"$work/src/debian/control"
depends="$(cd "$work/src" && dpkg-shlibdeps -O "$pkg/usr/bin/grape" "$pkg/usr/bin/grenache" \
  "$pkg/usr/lib/$multiarch/libgrenache.so.$version" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')"
size="$(du -ks --exclude=DEBIAN "$pkg" | cut -f1)"
cat >"$pkg/DEBIAN/control" <<EOF
Package: grenache
Version: $debver
Architecture: $arch
Maintainer: grenache-rs contributors <grenache-rs@example.invalid>
Installed-Size: $size
Depends: ${depends:-libc6}
Section: net
Priority: optional
Homepage: https://example.invalid/grenache-rs
Description: Grenache microservices: the Grape DHT node, CLI and C library
 grenache-rs is a Rust implementation of Bitfinex's Grenache: Grapes (DHT nodes with an HTTP
 API), Links, RPC over HTTP and WebSocket, PUB/SUB, wire-compatible with the Node.js reference.
 .
 This package has the grape and grenache binaries, the Grape as a systemd service
 (grenache-grape, configured in /etc/default/grenache-grape, running as the user grenache),
 and the C library libgrenache with its header and pkg-config file.
EOF
mkdir -p "$out"
deb="$out/grenache_${debver}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
