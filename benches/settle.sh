# Sourced by the bench scripts. `settle PID` waits (at most 10 s) until the process and its
# children have been idle for 200 ms — under 10 % of a CPU — so the background work one round
# leaves behind (RocksDB flushes and compactions, redis's AOF rewrite, which runs in a forked
# child) runs before the next round starts instead of inside another server's round on the same
# CPU. It prints the CPU microseconds they spent while settling, so callers can charge them to
# the round.
settle() {
  local pid=$1 start now last waited=0 hz
  hz=$(getconf CLK_TCK)
  # The process's own time and its reaped children's, plus its live children's. The children
  # are read first: one reaped in between is then counted twice (a longer wait), never missed.
  ticks() {
    local t=0 c
    for c in $(pgrep -P "$1" 2>/dev/null); do
      t=$((t + $(awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || echo 0)))
    done
    echo $((t + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat" 2>/dev/null || echo 0)))
  }
  start=$(ticks "$pid"); last=$start
  while [ "$waited" -lt 50 ]; do
    sleep 0.2; waited=$((waited + 1))
    now=$(ticks "$pid")
    # A child that ended between two samples may have left them out of order.
    if [ "$now" -lt "$last" ]; then now=$last; fi
    # 200 ms at under 10 %: fewer than 0.02 s of CPU.
    if [ $(( (now - last) * 100 )) -lt $((2 * hz)) ]; then break; fi
    last=$now
  done
  echo $(( (now - start) * 1000000 / hz ))
}
