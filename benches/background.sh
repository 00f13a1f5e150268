#!/usr/bin/env bash
# Where one tarnd's CPU goes, thread by thread, over a longer run: the connection cores against
# the background work (RocksDB's flushes and compactions, moving logs into partitions) that the store
# grows into as every insert adds a fresh key. Prints each round's ops/s and server CPU per op,
# then the CPU per operation of each thread name over all rounds (including what the server does
# in the pauses between rounds), and what RocksDB's flushes and compactions wrote, per column
# family kind (from its LOG). Every process started here is stopped by PID.
#
#   benches/background.sh                          # 50 x 1, 50 % inserts, 10 rounds of 5 s
#   PROFILE=50x16:50 ROUNDS=18 SECS=5 TARND=/tmp/tarnd-old benches/background.sh
#
# Profile syntax as compare.sh: CONNSxPIPELINE:INSERT_PCT. Server on SERVER_CPU, tarn-load on
# LOAD_CPU, 100 000 keys preloaded, the index sized for the fresh keys (INDEX_BYTES).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-50x1:50}; ROUNDS=${ROUNDS:-10}; SECS=${SECS:-5}
KEYS=${KEYS:-100000}; VALUE=${VALUE:-300}; SERVER_CPU=${SERVER_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tarn-target}"
B="$CARGO_TARGET_DIR/release"
TARND=${TARND:-$B/tarnd}
cp=${PROFILE%%:*}; pct=${PROFILE##*:}; conns=${cp%%x*}; pipe=${cp##*x}

work=$(mktemp -d /tmp/tarn-bg.XXXXXX)
tpid=""
cleanup() { if [ -n "$tpid" ]; then kill -TERM "$tpid" 2>/dev/null || true; fi; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

printf 'index_bytes = %s\n' "${INDEX_BYTES:-4294967296}" > "$work/tarnd.conf"
taskset -c "$SERVER_CPU" "$TARND" --config "$work/tarnd.conf" --data-dir "$work/data" --listen 127.0.0.1:0 \
  --metrics-listen off --cores 1 --log warn > "$work/out" 2> "$work/err" &
tpid=$!
for _ in $(seq 1 100); do grep -q "tarnd ready" "$work/out" 2>/dev/null && break; sleep 0.1; done
grep -q "tarnd ready" "$work/out" || { cat "$work/err" >&2; exit 1; }
addr=$(sed -E 's/.*listen=([^ ]+).*/\1/' "$work/out")
taskset -c "$LOAD_CPU" "$B/tarn-load" --target "tarn://$addr" --keys "$KEYS" --value-bytes "$VALUE" \
  --preload --insert-pct 0 --conns 1 --duration 0s > /dev/null

# CPU ticks per thread name (threads of one name summed), from /proc.
threads() {
  for t in /proc/"$tpid"/task/*; do
    printf '%s %s\n' "$(tr ' ' '_' < "$t/comm")" "$(awk '{print $14 + $15}' "$t/stat")"
  done | awk '{a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}
threads > "$work/before"
echo "tarnd $TARND, profile $PROFILE, $ROUNDS rounds of ${SECS}s"
: > "$work/ops"
for r in $(seq 1 "$ROUNDS"); do
  out=$(taskset -c "$LOAD_CPU" "$B/tarn-load" --target "tarn://$addr" --server-pid "$tpid" --conns "$conns" \
    --pipeline "$pipe" --insert-pct "$pct" --value-bytes "$VALUE" --keys "$KEYS" --duration "${SECS}s" --json)
  python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('round', sys.argv[2], round(d['ops_per_sec']), 'ops/s', round(d['server_cpu_us_per_op'] or 0, 2), 'us/op'); print(d['ops'], file=open(sys.argv[3], 'a'))" "$out" "$r" "$work/ops"
  sleep 1
done
sleep 3
threads > "$work/after"
# RocksDB writes its LOG through a buffer: stop tarnd (it flushes on close) before reading it.
kill -TERM "$tpid" 2>/dev/null || true
wait "$tpid" 2>/dev/null || true
tpid=""
python3 - "$work/before" "$work/after" "$work/ops" "$(getconf CLK_TCK)" "$work/data/db/LOG" <<'PY'
import collections, json, os, sys
before = dict(l.split() for l in open(sys.argv[1]))
after = dict(l.split() for l in open(sys.argv[2]))
ops = max(1, sum(int(l) for l in open(sys.argv[3])))
hz = int(sys.argv[4])
print(f"{ops} operations; CPU per operation by thread (us):")
for name in sorted(after):
    used = (int(after[name]) - int(before.get(name, 0))) / hz
    if used > 0:
        print(f"  {name:<18} {used * 1e6 / ops:8.3f}")
written = collections.Counter(); count = collections.Counter(); jobs = {}
if not os.path.exists(sys.argv[5]):
    print("  (no RocksDB LOG to read)")
else:
    for line in open(sys.argv[5], errors="replace"):
        if "EVENT_LOG_v1" not in line or "{" not in line:
            continue
        try:
            e = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        cf = e.get("cf_name", "?")
        # Partitions e-<epoch>; the epochs' logs j-<epoch> (the single "journal" of earlier builds).
        kind = "partitions" if cf.startswith("e-") else "logs" if cf.startswith("j-") or cf == "journal" else cf
        event, job = e.get("event"), e.get("job")
        if event in ("compaction_started", "flush_started"):
            jobs[job] = kind
        elif event == "compaction_finished":
            written["compaction " + jobs.get(job, "?")] += e.get("total_output_size", 0)
            count["compaction " + jobs.get(job, "?")] += 1
        elif event == "table_file_creation" and kind == "logs":
            written["log tables (flush + compaction)"] += e.get("file_size", 0)
for k in sorted(written):
    n = f" ({count[k]} jobs)" if count[k] else ""
    print(f"  {k:<36} {written[k] / 2**20:10.0f} MiB{n}")
PY
