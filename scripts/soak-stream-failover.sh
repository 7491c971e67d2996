#!/usr/bin/env bash
# Kills the leader of a stream on a 3-node antre cluster (real processes
# on loopback) under confirmed publishing through another node, CYCLES
# times (default 100), restarting it each time; then checks that every
# confirmed message is in the stream and that every node holds the same
# messages at the same offsets. Prints one line of figures:
#
#   stream failover: N leader kills, ... confirmed, ... in the stream, 0 lost
#
# It is crates/antre/tests/cluster_streams.rs's kill loop (which CI runs
# with 3 cycles), with a cycle count from ANTRE_STREAM_CYCLES.
#
# Usage: scripts/soak-stream-failover.sh [CYCLES]
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-100}"
ANTRE_STREAM_CYCLES="$cycles" cargo test -p antre --test cluster \
    cluster_streams::nothing_confirmed_is_lost_through_leader_kills -- --nocapture 2>&1 |
    grep -E "^stream failover:|^test result|panicked"
