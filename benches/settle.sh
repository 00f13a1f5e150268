# Sourced by the bench scripts. `settle PID` waits (at most 10 s) until the process has been
# idle for 200 ms — under 10 % of a CPU — so the background work one round leaves behind
# (RocksDB flushes and compactions, the journal's apply, redis's AOF rewrite) runs before the
# next round starts instead of inside another server's round on the same CPU. It prints the
# CPU microseconds the process spent while settling, so callers can charge them to the round.
settle() {
  local pid=$1 start now last waited=0 hz
  hz=$(getconf CLK_TCK)
  ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
  start=$(ticks "$pid"); last=$start
  while [ "$waited" -lt 50 ]; do
    sleep 0.2; waited=$((waited + 1))
    now=$(ticks "$pid")
    # 200 ms at under 10 %: fewer than 0.02 s of CPU.
    if [ $(( (now - last) * 100 )) -lt $((2 * hz)) ]; then break; fi
    last=$now
  done
  echo $(( (now - start) * 1000000 / hz ))
}
