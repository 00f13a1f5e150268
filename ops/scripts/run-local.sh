#!/usr/bin/env bash
# Builds tarnd and starts a working node on loopback with the embedded defaults (RocksDB in
# ./tarn-data, clients on 127.0.0.1:7400, metrics on 127.0.0.1:9400, no config file), shows it
# working with tarnctl, and keeps serving until Ctrl-C:
#   ops/scripts/run-local.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

ops/scripts/setup-host.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tarn-target}"
cargo build --release --locked -p tarn-node -p tarn-ops
bin="$CARGO_TARGET_DIR/release"
data="${TARN_DATA_DIR:-$PWD/tarn-data}"
addr="${TARN_LISTEN:-127.0.0.1:7400}"

"$bin/tarnd" --data-dir "$data" --listen "$addr" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM EXIT
for _ in $(seq 1 100); do
  "$bin/tarnctl" time --node "$addr" --timeout 1 >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { echo "tarnd exited" >&2; exit 1; }
  sleep 0.2
done

echo
echo "== tarnd is up (pid $pid). A round trip with tarnctl:"
epoch=$("$bin/tarnctl" time --node "$addr" --json | sed -E 's/.*"epoch":([0-9]+).*/\1/')
key=$(printf 'demo-%s' "$epoch" | sha256sum | cut -c1-64)
set -x
"$bin/tarnctl" put --node "$addr" --epoch "$epoch" --key "$key" --value-hex 68656c6c6f
"$bin/tarnctl" get --node "$addr" --epoch "$epoch" --key "$key"
"$bin/tarnctl" status --node "$addr"
set +x
echo
echo "Metrics: curl -s http://127.0.0.1:9400/metrics | grep ^tarn_"
echo "Serving until Ctrl-C (SIGTERM stops it gracefully)."
wait $pid
