#!/usr/bin/env bash
# The whole test suite, from a clean clone on a fresh Debian 12 machine:
#   ops/scripts/test.sh
# Installs what it needs, builds one profile (release) into $CARGO_TARGET_DIR (default
# /var/tmp/tarn-target, outside the clone, so later runs are warm), checks formatting and
# lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/../.."

ops/scripts/setup-host.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tarn-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== format" >&2
cargo fmt --all -- --check
echo "== build (release)" >&2
cargo build --release --workspace --all-targets --locked
echo "== package (cargo deb)" >&2
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --version 3.8.0
cargo deb -p tarn-node --no-build --output "$CARGO_TARGET_DIR/debian/tarn.deb"
# The tests run a test build of tarnd: feature `peer-audit` lets the Tor end-to-end test read
# which client addresses the nodes saw. The package above was built without it.
TEST_FEATURES=(--features tarn-node/peer-audit)
echo "== lint" >&2
cargo clippy --release --workspace --all-targets --locked -- -D warnings
cargo clippy --release --workspace --all-targets --locked "${TEST_FEATURES[@]}" -- -D warnings
echo "== docs" >&2
RUSTDOCFLAGS="-D warnings" cargo doc --release --workspace --no-deps --locked
echo "== test" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace --locked "${TEST_FEATURES[@]}" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary, so the total is visible at the end.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' \
  <(sed 's/;//g' "$log")
exit "$status"
