#!/usr/bin/env bash
# The whole benchmark suite, in one command (about 21 minutes on 2 cores):
#   bash benches/run.sh
# 1. criterion micro-benchmarks of dht-core (short measurement windows; reports in
#    target/criterion/), 2. dht-bench: the testnets side by side with mainline, the seed
#    scenario at 1x and 10x, standalone memory, catch-up, the largest network, hops versus
#    size, 3. dht-bench --only-wan: the testnets side by side with mainline over an emulated
#    50 ms RTT link (about 6 minutes; needs root and iptables-legacy, which this script
#    installs with apt-get when missing). dht-bench rewrites the tables between the markers
#    in BENCHMARKS.md.
# Options of this script (before the others): --no-wan skips step 3; WAN_RTT_MS,
# WAN_JITTER_MS, WAN_LOSS_PCT set its link (defaults 50, 0, 0).
# Extra arguments go to dht-bench (e.g. --sizes 10,50 --no-mainline).
set -euo pipefail
cd "$(dirname "$0")/.."
wan=1
if [[ "${1:-}" == "--no-wan" ]]; then
  wan=0
  shift
fi
cargo build --release -p dht-node -p dmsg-plugin -p dht-benches
cargo bench -p dht-benches --bench core -- --warm-up-time 1 --measurement-time 2
target/release/dht-bench --out BENCHMARKS.md "$@"

if [[ $wan == 0 ]]; then
  echo "== WAN section skipped (--no-wan)"
  exit 0
fi
if [[ $(id -u) != 0 ]]; then
  echo "== WAN section skipped: not root (it needs a network namespace and an iptables rule inside it)"
  exit 0
fi
if ! command -v iptables-legacy >/dev/null; then
  echo "== installing iptables (for iptables-legacy) for the WAN section"
  if ! { apt-get install -y -q iptables >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q iptables >/dev/null; }; }; then
    echo "== WAN section skipped: could not install iptables"
    exit 0
  fi
fi
# Runs in a network namespace of its own (gone when it exits); nothing is added to the
# root namespace.
target/release/dht-bench --only-wan --wan-rtt-ms "${WAN_RTT_MS:-50}" \
  --wan-jitter-ms "${WAN_JITTER_MS:-0}" --wan-loss-pct "${WAN_LOSS_PCT:-0}" --out BENCHMARKS.md
