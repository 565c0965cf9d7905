#!/usr/bin/env bash
# Build the podswitch image without a registry: a static busybox
# (/bin/busybox, Debian's busybox-static), podswitch and podswitch-cni and
# the shared libraries they need (they link glibc: no musl target is
# installed), and install.sh, on an otherwise empty root. Imported into
# podman as $IMAGE and saved as an OCI archive for containerd
# (`ctr -n k8s.io images import <dir>/podswitch-oci.tar` on each node).
#
# Usage: deploy/image/build.sh [OUT_DIR]   (default: $CARGO_TARGET_DIR or
# target/, then image/). SKIP_BUILD=1 takes the binaries as built, from
# BINARIES (default: the release build's directory); IMAGE names the
# image; PODMAN is the podman command (with its options).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
out=${1:-$target/image}
binaries=${BINARIES:-$target/release}
image=${IMAGE:-localhost/podswitch:latest}
# podman, with options of its own storage if wanted (word-split).
podman=${PODMAN:-podman}
if [ -z "${SKIP_BUILD:-}" ]; then
    (cd "$repo" && cargo build --release -p podswitch -p podswitch-cni)
fi
rootfs=$out/rootfs
rm -rf "$rootfs"
mkdir -p "$rootfs"/bin "$rootfs"/etc/podswitch "$rootfs"/tmp "$rootfs"/run/podswitch \
    "$rootfs"/var/lib/podswitch
install -m 0755 /bin/busybox "$rootfs/bin/busybox"
for applet in sh cp mv cat sed awk ip ls mkdir echo; do
    ln -s busybox "$rootfs/bin/$applet"
done
for binary in podswitch podswitch-cni; do
    install -m 0755 "$binaries/$binary" "$rootfs/bin/$binary"
    # The loader and libraries it links, at the same paths.
    for lib in $(ldd "$binaries/$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        cp --parents -L -n "$lib" "$rootfs"
    done
done
install -m 0755 "$repo/deploy/image/install.sh" "$rootfs/install.sh"
tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -cf "$out/rootfs.tar" .
$podman import --change 'CMD ["/bin/podswitch", "--version"]' "$out/rootfs.tar" "$image" >/dev/null
rm -f "$out/podswitch-oci.tar"
$podman save --format oci-archive -o "$out/podswitch-oci.tar" "$image" >/dev/null
echo "$image built; OCI archive $out/podswitch-oci.tar"
