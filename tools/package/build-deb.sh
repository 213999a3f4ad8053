#!/usr/bin/env bash
# Builds the Debian package: target/debian/hubel_<version>-1_<arch>.deb with /usr/bin/hubel, the
# desktop entry (packaging/linux/hubel.desktop) and the icon (assets/icon/), from the metadata in
# Cargo.toml's [package.metadata.deb]. Installs cargo-deb first if it is missing.
#
#   tools/package/build-deb.sh            # then: sudo apt install ./target/debian/hubel_*.deb
#
# The package is built with the `packaged` feature (the binary never looks for data in this
# source tree), in a target folder of its own so target/release keeps the developers' binary.
# Extra arguments go to `cargo deb`.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "cargo-deb is missing: cargo install cargo-deb --locked" >&2
  cargo install cargo-deb --locked
fi

export CARGO_TARGET_DIR="${HUBEL_DEB_TARGET_DIR:-target/package}"
mkdir -p target/debian
cargo deb --output target/debian/ "$@"
ls -l target/debian/hubel_*.deb
