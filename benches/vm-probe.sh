#!/usr/bin/env bash
# Two facts about the machine that the load figures depend on (BENCHMARKS.md, eleventh round):
#  1. what the first touch of memory costs: 512 MiB written once in 2 MiB pages (THP, as
#     tarnd's allocator asks for) and in 4 KiB pages, each mapped twice in a row — the second
#     mapping gets the pages the first just freed;
#  2. what waking a thread on the other CPU costs: a one-byte pipe ping-pong between threads on
#     CPU 0 and CPU 1 (each sleeps in read), against both threads on CPU 0.
# Needs a C compiler (cc); writes only to a temporary directory it removes.
#   benches/vm-probe.sh
set -euo pipefail
work=$(mktemp -d /tmp/tarn-vmprobe.XXXXXX)
trap 'rm -rf "$work"' EXIT
cat > "$work/touch.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
  size_t n = (size_t)atol(argv[1]) << 20; int huge = atoi(argv[2]);
  for (int pass = 1; pass <= 2; pass++) {
    char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    if (madvise(p, n, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE)) { perror("madvise"); return 1; }
    double t = now();
    for (size_t i = 0; i < n; i += 4096) p[i] = 1;
    double d = now() - t;
    /* What the kernel actually gave: huge pages only where THP allows them. */
    long huge_kb = -1; char line[256]; FILE *f = fopen("/proc/self/smaps_rollup", "r");
    while (f && fgets(line, sizeof line, f)) sscanf(line, "AnonHugePages: %ld kB", &huge_kb);
    if (f) fclose(f);
    printf("first touch, %s pages asked, mapping %d: %.2f ms per 2 MiB (AnonHugePages %ld MiB)\n",
           huge ? "2 MiB" : "4 KiB", pass, d / (n / 2097152.0) * 1e3, huge_kb / 1024);
    munmap(p, n);
  }
  return 0;
}
C
cat > "$work/wake.c" <<'C'
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static int a[2], b[2]; static const int N = 20000;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void pin(int c) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(c, &s); if (pthread_setaffinity_np(pthread_self(), sizeof s, &s)) { fprintf(stderr, "cannot pin to CPU %d\n", c); exit(1); } }
static void *echo(void *x) { pin(*(int *)x); char c; for (int i = 0; i < N; i++) { if (read(a[0], &c, 1) != 1 || write(b[1], &c, 1) != 1) break; } return 0; }
int main(int argc, char **argv) {
  int other = atoi(argv[1]); pthread_t t; char c = 'x';
  if (pipe(a) || pipe(b)) return 1;
  pin(0); if (pthread_create(&t, 0, echo, &other)) return 1;
  double t0 = now();
  for (int i = 0; i < N; i++) { if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1) return 1; }
  double d = now() - t0; pthread_join(t, 0);
  struct timespec cpu; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
  printf("pipe round trip, threads on CPU 0 and CPU %d: %.1f us, %.1f us of CPU\n", other, d / N * 1e6, (cpu.tv_sec + cpu.tv_nsec * 1e-9) / N * 1e6);
  return 0;
}
C
cc -O2 -o "$work/touch" "$work/touch.c"
cc -O2 -pthread -o "$work/wake" "$work/wake.c"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); THP $(cat /sys/kernel/mm/transparent_hugepage/enabled), defrag $(cat /sys/kernel/mm/transparent_hugepage/defrag)"
if [ -r /sys/module/haltpoll/parameters/guest_halt_poll_ns ]; then
  echo "guest halt polling: $(cat /sys/module/haltpoll/parameters/guest_halt_poll_ns) ns"
fi
taskset -c 0 "$work/touch" 512 1
taskset -c 0 "$work/touch" 512 0
if [ "$(nproc)" -ge 2 ]; then
  "$work/wake" 1
else
  echo "one CPU: no cross-CPU wake-up to measure"
fi
"$work/wake" 0
