#!/usr/bin/env bash
# tarnd as a fraction of the machine's limit for the same framing: tarnd (--cores 1, default
# durability: WAL written per insert, synced every second) and limit-server (a minimal epoll
# server answering fixed replies, storing nothing), each pinned to the same CPU, tarn-load on
# the other, rounds interleaved A B A B ..., medians and the ratio. Every process started
# here is stopped by PID.
#   ROUNDS=3 SECS=5 CONNS=50 PIPELINE=1 INSERT_PCT=50 benches/limit.sh
# TARND=PATH measures another tarnd build (an A/B of a change). REDIS=1 adds redis-server (AOF,
# everysec, as in compare.sh) to every round, after tarnd: the known server's fraction of the
# same limit, measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tarn-target}"
B="$CARGO_TARGET_DIR/release"
ROUNDS="${ROUNDS:-3}"; SECS="${SECS:-5}"; CONNS="${CONNS:-50}"; PIPELINE="${PIPELINE:-1}"
INSERT_PCT="${INSERT_PCT:-50}"; KEYS="${KEYS:-100000}"; VALUE="${VALUE:-300}"
SERVER_CPU="${SERVER_CPU:-0}"; LOAD_CPU="${LOAD_CPU:-1}"; REDIS="${REDIS:-0}"
work=$(mktemp -d /tmp/tarn-limit.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# Inserts write fresh keys (tarn-load): the index holds them all, as in compare.sh.
printf 'index_bytes = %s\n' "${INDEX_BYTES:-4294967296}" > "$work/tarnd.conf"
taskset -c "$SERVER_CPU" "${TARND:-$B/tarnd}" --config "$work/tarnd.conf" --data-dir "$work/tarn" \
  --listen 127.0.0.1:0 --metrics-listen off --cores 1 --log warn > "$work/tarnd.out" 2> "$work/tarnd.err" &
tpid=$!; pids+=("$tpid")
taskset -c "$SERVER_CPU" "$B/limit-server" --listen 127.0.0.1:0 > "$work/limit.out" &
lpid=$!; pids+=("$lpid")
for _ in $(seq 1 100); do
  grep -q "tarnd ready" "$work/tarnd.out" 2>/dev/null && grep -q ready "$work/limit.out" 2>/dev/null && break
  sleep 0.1
done
taddr=$(sed -E 's/.*listen=([^ ]+).*/\1/' "$work/tarnd.out")
laddr=$(sed -E 's/.*listen=([^ ]+).*/\1/' "$work/limit.out")
targets=("tarn://$taddr")
if [ "$REDIS" = 1 ]; then
  command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }
  rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  taskset -c "$SERVER_CPU" redis-server --port "$rport" --bind 127.0.0.1 --dir "$work" --appendonly yes \
    --appendfsync everysec --save "" --daemonize no --logfile "$work/redis.log" &
  rpid=$!; pids+=("$rpid")
  for _ in $(seq 1 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$rport" ping >/dev/null 2>&1 || { echo "redis-server did not start:" >&2; cat "$work/redis.log" >&2; exit 1; }
  targets+=("redis://127.0.0.1:$rport")
fi
for t in "${targets[@]}"; do
  taskset -c "$LOAD_CPU" "$B/tarn-load" --target "$t" --keys "$KEYS" --value-bytes "$VALUE" \
    --preload --insert-pct 0 --conns 1 --duration 0s >/dev/null
done

load() {
  taskset -c "$LOAD_CPU" "$B/tarn-load" --target "$1" --server-pid "$2" --conns "$CONNS" \
    --pipeline "$PIPELINE" --insert-pct "$INSERT_PCT" --value-bytes "$VALUE" --keys "$KEYS" \
    --duration "${SECS}s" --json
}
# shellcheck source=settle.sh
. benches/settle.sh
field() { python3 -c "import json,sys; print(round(json.loads(sys.argv[1])[sys.argv[2]]))" "$1" "$2"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); servers on CPU $SERVER_CPU, load on CPU $LOAD_CPU"
echo "profile: ${CONNS}x${PIPELINE}, ${INSERT_PCT}% inserts, ${VALUE} B values, ${KEYS} keys; ${ROUNDS} rounds x ${SECS}s interleaved"
a=(); b=(); c=(); pairs=(); rpairs=(); errs=0
for r in $(seq 1 "$ROUNDS"); do
  x=$(load "tarn://$laddr" "$lpid"); settle "$lpid" >/dev/null
  y=$(load "tarn://$taddr" "$tpid"); settle "$tpid" >/dev/null
  a+=("$(field "$x" ops_per_sec)"); b+=("$(field "$y" ops_per_sec)")
  pairs+=("$(python3 -c "print(${b[-1]}/${a[-1]})")")
  errs=$((errs + $(field "$x" errors) + $(field "$y" errors)))
  line="round $r: limit-server ${a[-1]} ops/s (p99 $(field "$x" p99_us) us)   tarnd ${b[-1]} ops/s (p99 $(field "$y" p99_us) us)"
  if [ "$REDIS" = 1 ]; then
    z=$(load "redis://127.0.0.1:$rport" "$rpid"); settle "$rpid" >/dev/null
    c+=("$(field "$z" ops_per_sec)"); rpairs+=("$(python3 -c "print(${c[-1]}/${a[-1]})")")
    errs=$((errs + $(field "$z" errors)))
    line+="   redis ${c[-1]} ops/s (p99 $(field "$z" p99_us) us)"
  fi
  echo "$line"
done
ma=$(median "${a[@]}"); mb=$(median "${b[@]}")
# pair: the median of each round's tarnd/limit (the runs of a round are seconds apart).
echo "median: limit-server $ma ops/s, tarnd $mb ops/s; tarnd/limit $(python3 -c "print(round($mb/$ma, 2))"); pair $(python3 -c "print(round($(median "${pairs[@]}"), 2))")"
if [ "$REDIS" = 1 ]; then
  mc=$(median "${c[@]}")
  echo "median: redis $mc ops/s; redis/limit $(python3 -c "print(round($mc/$ma, 2))"); pair $(python3 -c "print(round($(median "${rpairs[@]}"), 2))")"
fi
echo "errors (every server, every round): $errs"
