#!/usr/bin/env bash
# Side-by-side load runs: tarnd and redis-server, each pinned to the same core (SERVER_CPU),
# tarn-load pinned to another (LOAD_CPU), rounds interleaved A B A B ..., medians and the
# tarnd/redis ratio printed per profile.
#
#   benches/compare.sh                       # default profiles, 5 rounds of 5 s
#   ROUNDS=3 SECS=3 PROFILES="50x1:50 50x16:50" benches/compare.sh
#
# Profile syntax: CONNSxPIPELINE:INSERT_PCT. Durability: redis with appendonly yes +
# appendfsync everysec; tarnd with its default WAL policy (written per acknowledged insert,
# synced every second). NOPERSIST=1 runs the upper-bound pair instead (redis without AOF,
# tarnd with wal=disabled). TARND=PATH runs another tarnd build (e.g. an A/B of a change).
# Each profile gets fresh servers preloaded with KEYS keys; tarn-load's inserts write fresh
# keys (one value per key, like SET), and tarnd's index is sized to hold them (INDEX_BYTES).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
SECS=${SECS:-5}
PROFILES=${PROFILES:-"50x1:50 50x16:50 1x1:50 50x1:10 50x16:10"}
KEYS=${KEYS:-100000}
VALUE=${VALUE:-300}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
NOPERSIST=${NOPERSIST:-0}
INDEX_BYTES=${INDEX_BYTES:-4294967296}

command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }
ops/scripts/setup-host.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tarn-target}"
# The same build as the test command (ops/scripts/test.sh): a narrower -p build unifies
# features differently and would compile RocksDB a second time.
cargo build --release --locked --workspace --all-targets >&2
B="$CARGO_TARGET_DIR/release"

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ "$NOPERSIST" = 1 ]; then
  redis_persist=(--appendonly no --save "")
  tarn_wal=disabled
else
  redis_persist=(--appendonly yes --appendfsync everysec --save "")
  tarn_wal=periodic
fi
# Every insert writes a fresh key (tarn-load), so the keys grow through a profile on both
# servers; tarnd's index (its memory-resident read path, as redis keeps every key in memory)
# is sized to hold them all rather than retiring the epoch to RocksDB mid-run.
printf 'index_bytes = %s\n' "$INDEX_BYTES" > "$work/tarnd.conf"

# Fresh servers for each profile, both preloaded with every key so retrieves hit: every
# profile starts from the same state whatever ran before it.
start_servers() {
  local d="$work/run"
  mkdir -p "$d"
  rport=$(free_port); tport=$(free_port)
  taskset -c "$SERVER_CPU" redis-server --port "$rport" --bind 127.0.0.1 --dir "$d" "${redis_persist[@]}" \
    --daemonize no --logfile "$d/redis.log" &
  rpid=$!; pids+=("$rpid")
  taskset -c "$SERVER_CPU" "${TARND:-$B/tarnd}" --config "$work/tarnd.conf" --data-dir "$d/tarn" \
    --listen "127.0.0.1:$tport" --metrics-listen off --cores 1 --wal "$tarn_wal" --log warn \
    > "$d/tarnd.out" 2> "$d/tarnd.err" &
  tpid=$!; pids+=("$tpid")
  for _ in $(seq 1 100); do grep -q "tarnd ready" "$d/tarnd.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "tarnd ready" "$d/tarnd.out" || { cat "$d/tarnd.err" >&2; exit 1; }
  for _ in $(seq 1 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  taskset -c "$LOAD_CPU" "$B/tarn-load" --target "redis://127.0.0.1:$rport" --keys "$KEYS" --value-bytes "$VALUE" \
    --preload --insert-pct 0 --conns 1 --duration 0s >/dev/null
  taskset -c "$LOAD_CPU" "$B/tarn-load" --target "tarn://127.0.0.1:$tport" --keys "$KEYS" --value-bytes "$VALUE" \
    --preload --insert-pct 0 --conns 1 --duration 0s >/dev/null
}
stop_servers() {
  kill "$rpid" "$tpid" 2>/dev/null || true
  wait "$rpid" "$tpid" 2>/dev/null || true
  rm -rf "$work/run"
}

load() { # target pid conns pipeline insert_pct
  taskset -c "$LOAD_CPU" "$B/tarn-load" --target "$1" --server-pid "$2" --conns "$3" --pipeline "$4" \
    --insert-pct "$5" --value-bytes "$VALUE" --keys "$KEYS" --duration "${SECS}s" --json
}
# shellcheck source=settle.sh
. benches/settle.sh
json() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d[sys.argv[2]])" "$1" "$2"; }

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); server on CPU $SERVER_CPU, load on CPU $LOAD_CPU"
echo "durability: $([ "$NOPERSIST" = 1 ] && echo 'none (redis no AOF, tarnd wal=disabled)' || echo 'redis AOF everysec, tarnd wal=periodic (1 s)')"
echo "rounds: $ROUNDS x ${SECS}s, interleaved; value ${VALUE} B; ${KEYS} keys preloaded (fresh servers per profile); inserts write fresh keys; tarnd index_bytes $INDEX_BYTES"
# ratio is tarnd's median over redis's; pair is the median of each round's tarnd/redis (the
# two runs of a round are seconds apart), which cancels slow drifts of the host's speed. Each
# round's figures go to stderr.
printf '%-10s %-6s %12s %12s %7s %7s %9s %9s %9s %9s\n' profile ins% tarn_ops redis_ops ratio pair tarn_p50 redis_p50 tarn_p99 redis_p99
# Failed requests and failed connections (tarn-load's `errors`): a valid run has none.
t_errs=0; r_errs=0
for prof in $PROFILES; do
  cp=${prof%%:*}; pct=${prof##*:}; conns=${cp%%x*}; pipe=${cp##*x}
  t_ops=(); r_ops=(); t_p50=(); r_p50=(); t_p99=(); r_p99=(); pairs=()
  start_servers
  for round in $(seq 1 "$ROUNDS"); do
    out=$(load "tarn://127.0.0.1:$tport" "$tpid" "$conns" "$pipe" "$pct"); settle "$tpid" >/dev/null
    t_ops+=("$(json "$out" ops_per_sec)"); t_p50+=("$(json "$out" p50_us)"); t_p99+=("$(json "$out" p99_us)")
    t_errs=$((t_errs + $(json "$out" errors)))
    out=$(load "redis://127.0.0.1:$rport" "$rpid" "$conns" "$pipe" "$pct"); settle "$rpid" >/dev/null
    r_ops+=("$(json "$out" ops_per_sec)"); r_p50+=("$(json "$out" p50_us)"); r_p99+=("$(json "$out" p99_us)")
    r_errs=$((r_errs + $(json "$out" errors)))
    pairs+=("$(python3 -c "print(${t_ops[-1]}/${r_ops[-1]})")")
    printf '%s round %s: tarnd %.0f ops/s, redis %.0f ops/s, %.2f\n' "$prof" "$round" \
      "${t_ops[-1]}" "${r_ops[-1]}" "${pairs[-1]}" >&2
  done
  stop_servers
  med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
  tm=$(med "${t_ops[@]}"); rm_=$(med "${r_ops[@]}")
  printf '%-10s %-6s %12.0f %12.0f %7.2f %7.2f %9s %9s %9s %9s\n' "$cp" "$pct" "$tm" "$rm_" \
    "$(python3 -c "print($tm/$rm_)")" "$(med "${pairs[@]}")" "$(med "${t_p50[@]}")" "$(med "${r_p50[@]}")" "$(med "${t_p99[@]}")" "$(med "${r_p99[@]}")"
done
echo "errors (every round): tarnd $t_errs, redis $r_errs"
