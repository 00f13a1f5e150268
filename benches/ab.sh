#!/usr/bin/env bash
# A/B of two tarnd builds side by side: both pinned to the same core (SERVER_CPU), tarn-load on
# another (LOAD_CPU), rounds alternating A B A B ..., medians of ops/s and server CPU per op,
# and B/A. After each round the server is left to finish its background work (settle.sh) before
# the other side runs, and that work counts in its CPU per op. Every process started here is
# stopped by PID.
#
#   benches/ab.sh OLD_TARND NEW_TARND
#   ROUNDS=5 SECS=4 PROFILES="50x1:50 50x16:50" benches/ab.sh /tmp/tarnd-old "$CARGO_TARGET_DIR/release/tarnd"
#
# Profile syntax as compare.sh: CONNSxPIPELINE:INSERT_PCT. Both get fresh servers per profile
# with 100 000 keys preloaded, the default durability (WAL periodic) and an index sized for the
# fresh keys the inserts write (INDEX_BYTES, 4 GiB).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 OLD_TARND NEW_TARND" >&2; exit 2; }
ROUNDS=${ROUNDS:-5}; SECS=${SECS:-4}; PROFILES=${PROFILES:-"50x1:50 50x16:50"}
KEYS=${KEYS:-100000}; VALUE=${VALUE:-300}; SERVER_CPU=${SERVER_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tarn-target}"
B="$CARGO_TARGET_DIR/release"
work=$(mktemp -d /tmp/tarn-ab.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start() { # side binary
  rm -rf "${work:?}/$1"
  taskset -c "$SERVER_CPU" "$2" --config "$work/tarnd.conf" --data-dir "$work/$1" --listen 127.0.0.1:0 \
    --metrics-listen off --cores 1 --log warn > "$work/$1.out" 2> "$work/$1.err" &
  pids+=($!); echo $! > "$work/$1.pid"
  for _ in $(seq 1 100); do grep -q "tarnd ready" "$work/$1.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "tarnd ready" "$work/$1.out" || { cat "$work/$1.err" >&2; exit 1; }
  sed -E 's/.*listen=([^ ]+).*/\1/' "$work/$1.out" > "$work/$1.addr"
  taskset -c "$LOAD_CPU" "$B/tarn-load" --target "tarn://$(cat "$work/$1.addr")" --keys "$KEYS" \
    --value-bytes "$VALUE" --preload --insert-pct 0 --conns 1 --duration 0s >/dev/null
}
stop() { # side
  kill -TERM "$(cat "$work/$1.pid")" 2>/dev/null || true
  wait "$(cat "$work/$1.pid")" 2>/dev/null || true
}
# Inserts write fresh keys (tarn-load): the index holds them all, as in compare.sh.
printf 'index_bytes = %s\n' "${INDEX_BYTES:-4294967296}" > "$work/tarnd.conf"
# shellcheck source=settle.sh
. benches/settle.sh
echo "A: $1"; echo "B: $2"
# B/A is the ratio of the medians; pair_B/A is the median of each round's B/A against the A
# run just before it, which cancels slow drifts of the host's speed (cpu: the same for CPU/op).
printf '%-10s %12s %12s %7s %12s %12s %10s %10s\n' profile A_ops B_ops B/A A_cpu_us B_cpu_us pair_B/A pair_cpu
for prof in $PROFILES; do
  cp=${prof%%:*}; pct=${prof##*:}; conns=${cp%%x*}; pipe=${cp##*x}
  : > "$work/rounds"
  # Fresh, preloaded servers per profile: each starts from the same state.
  start a "$1"; start b "$2"
  for _ in $(seq 1 "$ROUNDS"); do
    for side in a b; do
      out=$(taskset -c "$LOAD_CPU" "$B/tarn-load" --target "tarn://$(cat "$work/$side.addr")" \
        --server-pid "$(cat "$work/$side.pid")" --conns "$conns" --pipeline "$pipe" --insert-pct "$pct" \
        --value-bytes "$VALUE" --keys "$KEYS" --duration "${SECS}s" --json)
      # The work a round leaves behind (flushes, compactions) is charged to it, and done before
      # the other side's round.
      after=$(settle "$(cat "$work/$side.pid")")
      python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('$side', d['ops_per_sec'], (d.get('server_cpu_us_per_op') or 0) + $after / max(d['ops'], 1), d['errors'])" "$out" >> "$work/rounds"
    done
  done
  stop a; stop b
  python3 - "$prof" "$work/rounds" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[2])]
med = lambda side, i: statistics.median(float(r[i]) for r in rows if r[0] == side)
a, b = med("a", 1), med("b", 1)
pairs = [(rows[i], rows[i + 1]) for i in range(0, len(rows) - 1, 2)]
pair = lambda i: statistics.median(float(y[i]) / float(x[i]) for x, y in pairs)
print(f"{sys.argv[1]:<10} {a:12.0f} {b:12.0f} {b / a:7.2f} {med('a', 2):12.2f} {med('b', 2):12.2f}"
      f" {pair(1):10.2f} {pair(2):10.2f}")
# Failed requests and failed connections: a valid run has none.
errs = {side: sum(int(r[3]) for r in rows if r[0] == side) for side in "ab"}
if errs["a"] or errs["b"]:
    print(f"{sys.argv[1]:<10} errors: A {errs['a']}, B {errs['b']}")
PY
done
