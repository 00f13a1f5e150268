#!/usr/bin/env bash
# Installs the system packages tarn's build and tests need, when missing (Debian 12, as root):
# clang + libclang-dev (RocksDB bindings), make (jemalloc, tarnd's allocator), chrony (time
# tests), prometheus (promtool, live scrape test), systemd (systemd-analyze for the unit files), libssl-dev + libsqlite3-dev +
# pkg-config (arti-client, the Tor transport), tor + iproute2 + curl (the private Tor network
# of the Tor test, in a network namespace of its own; tor's system service is not started).
# Safe to run again: it installs nothing that is already there.
set -euo pipefail

need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v make >/dev/null 2>&1 || need+=(make)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
[ -x /usr/sbin/chronyd ] || need+=(chrony)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
dpkg -s libsqlite3-dev >/dev/null 2>&1 || need+=(libsqlite3-dev)
command -v tor-gencert >/dev/null 2>&1 || need+=(tor)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v curl >/dev/null 2>&1 || need+=(curl)
for extra in "$@"; do
  dpkg -s "$extra" >/dev/null 2>&1 || need+=("$extra")
done

if [ ${#need[@]} -gt 0 ]; then
  echo "setup-host: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Packages with daemons (chrony, tor) must not start them: the tests run their own instances,
  # and a system chronyd would try to steer this machine's clock. policy-rc.d says "no".
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ "$created_policy" -eq 0 ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi
