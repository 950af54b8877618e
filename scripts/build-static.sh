#!/usr/bin/env bash
# Builds the example workloads as static binaries for `FROM scratch` images and for the process
# engine: glibc linked statically (crt-static; no musl toolchain here), into target/static so the
# flags never invalidate the normal target dir. Then copies the fedavg binaries beside their
# Dockerfiles (examples/fedavg/{aggregator,trainer}/, gitignored) and prints the absolute path of
# the brume-relay binary on the last line of stdout. Progress goes to stderr. The dirtier (the
# live-migration workload) lands in target/static/x86_64-unknown-linux-gnu/release/dirtier, the
# CRIU tests' workload (brume-dirtier's second binary) beside it as criu-workload.
#
# Idempotent and fast when up to date: cargo does nothing when nothing changed, and a binary is
# only copied when it differs from the copy already there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
triple="x86_64-unknown-linux-gnu"
export CARGO_TARGET_DIR="$root/target/static"
export RUSTFLAGS="-C target-feature=+crt-static"

echo "build-static: cargo build --release --target $triple -p brume-relay -p brume-fedavg -p brume-dirtier" >&2
(cd "$root" && "${CARGO:-cargo}" build --release --target "$triple" \
    -p brume-relay -p brume-fedavg -p brume-dirtier 1>&2)

out="$CARGO_TARGET_DIR/$triple/release"
for bin in aggregator trainer; do
    src="$out/$bin"
    dst="$root/examples/fedavg/$bin/$bin"
    if [[ ! -x "$src" ]]; then
        echo "build-static: $src was not built; check the brume-fedavg crate's [[bin]] names" >&2
        exit 1
    fi
    if ! cmp -s "$src" "$dst" 2>/dev/null; then
        cp "$src" "$dst.tmp.$$"
        mv -f "$dst.tmp.$$" "$dst"
        echo "build-static: copied $bin to $dst" >&2
    fi
done

relay="$out/brume-relay"
if [[ ! -x "$relay" ]]; then
    echo "build-static: $relay was not built" >&2
    exit 1
fi
echo "$relay"
