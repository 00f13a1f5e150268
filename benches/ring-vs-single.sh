#!/usr/bin/env bash
# The cost of forwarding and replication: the same tarn-load profile against one tarnd alone
# and against node 0 of a 4-node ring on loopback (3 copies per insert, reads and writes for
# keys owned by other nodes forwarded), rounds interleaved A B A B ..., medians and the ratio.
# Every process is started here and stopped by PID.
#   ROUNDS=3 SECS=5 CONNS=50 PIPELINE=1 INSERT_PCT=50 benches/ring-vs-single.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tarn-target}"
B="$CARGO_TARGET_DIR/release"
ROUNDS="${ROUNDS:-3}"; SECS="${SECS:-5}"; CONNS="${CONNS:-50}"; PIPELINE="${PIPELINE:-1}"
INSERT_PCT="${INSERT_PCT:-50}"; KEYS="${KEYS:-100000}"; VALUE="${VALUE:-300}"
work=$(mktemp -d /tmp/tarn-ringbench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

started=""
start() { # name join; sets $started to the node's address
  local out="$work/$1.out"
  "$B/tarnd" --data-dir "$work/$1" --listen 127.0.0.1:0 --metrics-listen off --cores 1 --log warn \
    ${2:+--join "$2"} > "$out" 2> "$work/$1.err" &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q "tarnd ready" "$out" 2>/dev/null && break; sleep 0.1; done
  started=$(sed -E 's/.*listen=([^ ]+).*/\1/' "$out")
}

start single ""; single="$started"
start r0 ""; r0="$started"
for i in 1 2 3; do start "r$i" "$r0"; done
for _ in $(seq 1 100); do
  n=$("$B/tarnctl" nodes --node "$r0" --json | grep -o '"address"' | wc -l)
  [ "$n" -ge 4 ] && break; sleep 0.2
done

load() {
  "$B/tarn-load" --target "tarn://$1" --conns "$CONNS" --pipeline "$PIPELINE" --insert-pct "$INSERT_PCT" \
    --value-bytes "$VALUE" --keys "$KEYS" --duration "${SECS}s" --json
}
field() { python3 -c "import json,sys; print(round(json.loads(sys.argv[1])[sys.argv[2]]))" "$1" "$2"; }

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); every tarnd --cores 1, unpinned"
echo "profile: ${CONNS}x${PIPELINE}, ${INSERT_PCT}% inserts, ${VALUE} B values, ${KEYS} keys, ${ROUNDS} rounds x ${SECS}s interleaved"
a=(); b=(); ap=(); bp=(); errs=0
for r in $(seq 1 "$ROUNDS"); do
  x=$(load "$single"); y=$(load "$r0")
  a+=("$(field "$x" ops_per_sec)"); b+=("$(field "$y" ops_per_sec)")
  ap+=("$(field "$x" p99_us)"); bp+=("$(field "$y" p99_us)")
  errs=$((errs + $(field "$x" errors) + $(field "$y" errors)))
  echo "round $r: single ${a[-1]} ops/s (p99 ${ap[-1]} us)   ring-of-4 ${b[-1]} ops/s (p99 ${bp[-1]} us)"
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
ma=$(median "${a[@]}"); mb=$(median "${b[@]}")
echo "median: single $ma ops/s (p99 $(median "${ap[@]}") us), ring-of-4 $mb ops/s (p99 $(median "${bp[@]}") us); ring/single $(python3 -c "print(round($mb/$ma, 2))"); errors $errs"
