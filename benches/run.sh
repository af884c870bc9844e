#!/usr/bin/env bash
# The whole benchmark suite, in one command (about 15 minutes on 2 cores):
#   bash benches/run.sh
# 1. criterion micro-benchmarks of dht-core (short measurement windows; reports in
#    target/criterion/), 2. dht-bench: the testnets side by side with mainline, the seed
#    scenario at 1x and 10x, standalone memory, catch-up, the largest network, hops versus
#    size. dht-bench rewrites the tables between the markers in BENCHMARKS.md.
# Extra arguments go to dht-bench (e.g. --sizes 10,50 --no-mainline).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p dht-node -p dmsg-plugin -p dht-benches
cargo bench -p dht-benches --bench core -- --warm-up-time 1 --measurement-time 2
target/release/dht-bench --out BENCHMARKS.md "$@"
