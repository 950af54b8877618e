#!/usr/bin/env bash
# Builds the node image brume-node:<hash> (and tags it brume-node:latest) with no registry and no
# network: FROM scratch around
#   - brume, its debug info stripped: the static release build by default (glibc crt-static, in
#     target/static), or BRUME_NODE_BIN (the tests give their debug build, which is dynamic: its
#     libraries then come along like criu's),
#   - criu (/usr/local/sbin/criu from scripts/install-criu.sh) with every library `ldd` lists,
#   - sh and cat (a CRIU task's output is drained by a `cat` of its own, which outlives the node),
#   - tar and gzip (CRIU carries a tmpfs's contents through them: a CRIU task's /dev is one),
#   - empty /tmp, /run, /var/lib/brume (the node's data dir) and /etc/{passwd,group,nsswitch}.
# The hash covers every file of the root file system and the Dockerfile, so the tag changes
# exactly when the contents do; an image that exists already is not built again. Prints the tag
# on the last line of stdout; progress goes to stderr.
#
#   BRUME_NODE_BIN=/path/to/brume  use this binary (static or not) instead of building one
#   CRIU=/path/to/criu                    another criu (default /usr/local/sbin/criu)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
triple="x86_64-unknown-linux-gnu"
criu="${CRIU:-/usr/local/sbin/criu}"
started=$(date +%s%N)

if [[ -n "${BRUME_NODE_BIN:-}" ]]; then
    brume="$BRUME_NODE_BIN"
else
    echo "node-image: cargo build --release --target $triple -p brume (static)" >&2
    (cd "$root" && CARGO_TARGET_DIR="$root/target/static" RUSTFLAGS="-C target-feature=+crt-static" \
        "${CARGO:-cargo}" build --release --target "$triple" -p brume 1>&2)
    brume="$root/target/static/$triple/release/brume"
fi
# A dynamic brume brings its libraries, like criu.
sh="$(readlink -f /bin/sh)"
dynamic=("$criu" "$sh" "$(command -v cat)" "$(command -v tar)" "$(command -v gzip)")
if ! ldd "$brume" 2>&1 | grep -q "not a dynamic executable\|statically linked"; then
    dynamic+=("$brume")
fi
if [[ ! -x "$criu" ]]; then
    echo "node-image: no criu at $criu (build it with scripts/install-criu.sh, or set CRIU=)" >&2
    exit 1
fi

out="$root/target/node-image"
rootfs="$out/rootfs"
# One build at a time: two tests (or a test and a bench) that make the image at once would
# otherwise assemble the same rootfs.tmp together.
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
rm -rf "$rootfs.tmp"
mkdir -p "$rootfs.tmp"/{bin,usr/local/bin,usr/local/sbin,usr/bin,tmp,run,var/lib/brume,etc}
chmod 1777 "$rootfs.tmp/tmp"
install -m 0755 "$brume" "$rootfs.tmp/usr/local/bin/brume"
# Debug info is 100 of brume's 130 MB; the image does not need it (panics still name functions).
if command -v strip >/dev/null; then
    strip --strip-debug "$rootfs.tmp/usr/local/bin/brume"
fi
install -m 0755 "$criu" "$rootfs.tmp/usr/local/sbin/criu"
for tool in cat tar gzip; do
    install -m 0755 "$(command -v $tool)" "$rootfs.tmp/usr/bin/$tool"
done
install -m 0755 "$sh" "$rootfs.tmp/bin/sh"
# Every shared library (and the loader) the dynamic programs need, at the path ldd resolves,
# symlinks followed so the image holds the files themselves.
for prog in "${dynamic[@]}"; do
    ldd "$prog" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
        mkdir -p "$rootfs.tmp$(dirname "$lib")"
        cp -L "$lib" "$rootfs.tmp$lib"
    done
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs.tmp/etc/passwd"
printf 'root:x:0:\n' >"$rootfs.tmp/etc/group"
printf 'hosts: files\n' >"$rootfs.tmp/etc/nsswitch.conf"
cp "$root/Dockerfile" "$out/Dockerfile"
rm -rf "$rootfs"
mv "$rootfs.tmp" "$rootfs"

hash=$(cd "$out" && { find rootfs -type f -print0 | sort -z | xargs -0 sha256sum; sha256sum Dockerfile; } \
    | sha256sum | cut -c1-12)
tag="brume-node:$hash"
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "node-image: $tag exists already" >&2
else
    echo "node-image: docker build -t $tag ($(du -sh "$rootfs" | cut -f1) root file system)" >&2
    docker build -q -t "$tag" --label brume.node-image=1 --label "brume.node-image.hash=$hash" \
        --label "brume.version=$("$brume" --version | head -1 | cut -d' ' -f2)" "$out" 1>&2
fi
# The dynamic programs must run in the image (a library or the loader missing says "no such file").
for prog in /usr/local/bin/brume /usr/local/sbin/criu /usr/bin/cat /usr/bin/tar /usr/bin/gzip; do
    if ! docker run --rm --network none --entrypoint "$prog" "$tag" --version >/dev/null; then
        echo "node-image: $prog does not run in $tag (a library missing?)" >&2
        docker rmi "$tag" >/dev/null
        exit 1
    fi
done
docker tag "$tag" brume-node:latest
took_ms=$((($(date +%s%N) - started) / 1000000))
echo "node-image: ready in $((took_ms / 1000)).$(printf %03d $((took_ms % 1000))) s" >&2
echo "$tag"
