#!/usr/bin/env bash
# Builds tarnd and starts a small local ring on loopback with the embedded defaults (no config
# file): node 0 on 127.0.0.1:7400 starts the ring, nodes 1..N-1 on 7401.. join it; metrics on
# 127.0.0.1:9400+i; data in ./tarn-data/nI. Shows the ring working with tarnctl (membership,
# an insert through one node read back through another, the ring walk, a lookup) and keeps
# serving until Ctrl-C, which stops every node gracefully (each hands its records over).
#   ops/scripts/run-local.sh            # 5 nodes
#   RING_SIZE=1 ops/scripts/run-local.sh  # one development node
set -euo pipefail
cd "$(dirname "$0")/../.."

ops/scripts/setup-host.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tarn-target}"
# The same build as the test command (ops/scripts/test.sh): a narrower -p build unifies
# features differently and would compile RocksDB a second time.
cargo build --release --locked --workspace --all-targets
bin="$CARGO_TARGET_DIR/release"
data="${TARN_DATA_DIR:-$PWD/tarn-data}"
size="${RING_SIZE:-5}"
base=7400

pids=()
stop() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop INT TERM EXIT

wait_up() {
  for _ in $(seq 1 150); do
    "$bin/tarnctl" time --node "$1" --timeout 1 >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { echo "tarnd on $1 exited" >&2; exit 1; }
    sleep 0.2
  done
  echo "tarnd on $1 did not come up" >&2
  exit 1
}

first="127.0.0.1:$base"
for i in $(seq 0 $((size - 1))); do
  addr="127.0.0.1:$((base + i))"
  join=()
  [ "$i" -gt 0 ] && join=(--join "$first")
  "$bin/tarnd" --data-dir "$data/n$i" --listen "$addr" \
    --metrics-listen "127.0.0.1:$((9400 + i))" "${join[@]}" >/dev/null 2> >(trap '' INT TERM; exec sed -u "s/^/[n$i] /" >&2) &
  pids+=($!)
  wait_up "$addr" "${pids[-1]}"
done

echo
echo "== $size tarnd node(s) up (pids ${pids[*]}). Waiting for the ring to settle..."
for _ in $(seq 1 60); do
  n=$("$bin/tarnctl" nodes --node "$first" --json | grep -o '"address"' | wc -l)
  [ "$n" -ge "$size" ] && "$bin/tarnctl" ring --node "$first" >/dev/null 2>&1 && break
  sleep 0.5
done
last="127.0.0.1:$((base + size - 1))"
epoch=$("$bin/tarnctl" time --node "$first" --json | sed -E 's/.*"epoch":([0-9]+).*/\1/')
key=$(printf 'demo-%s' "$epoch" | sha256sum | cut -c1-64)
set -x
"$bin/tarnctl" nodes --node "$first"
"$bin/tarnctl" put --node "$first" --epoch "$epoch" --key "$key" --value-hex 68656c6c6f
"$bin/tarnctl" get --node "$last" --epoch "$epoch" --key "$key"
"$bin/tarnctl" ring --node "$last"
"$bin/tarnctl" lookup --node "$first" --key "$key"
set +x
echo
echo "Metrics: curl -s http://127.0.0.1:9400/metrics | grep ^tarn_ring"
echo "Serving until Ctrl-C (SIGTERM stops every node gracefully)."
wait "${pids[0]}"
