#!/usr/bin/env bash
# Kills the leader of a quorum queue on a 3-node antre cluster (real
# processes on loopback) under confirmed publishing and consuming, CYCLES
# times (default 100), restarting it each time; then drains the queue and
# checks that no confirmed message was lost and that every repeated
# delivery was marked redelivered. Prints one line of figures:
#
#   quorum failover: cycles 100, confirmed ..., delivered ..., lost 0,
#   duplicated ..., unmarked repeats 0, failover (kill to first confirm
#   on the new leader) mean ... max ...
#
# It is the failover loop of crates/antre/tests/quorum_cluster.rs (which CI
# runs with 3 cycles), with a cycle count from ANTRE_QUORUM_CYCLES. The
# loop runs twice: on a plain quorum queue, then on one that dead-letters
# at least once, whose consumer rejects every seventh message; that run
# also checks that every rejected message reached the dead-letter queue:
#
#   at-least-once dead letters: rejected ..., dead-lettered ..., lost 0,
#   duplicated ...
#
# Usage: scripts/soak-quorum-failover.sh [CYCLES]
#
# ANTRE_QUORUM_TRACE=S (seconds) also prints every failover that took S or
# more: each attempt at the first confirm and what the nodes logged
# meanwhile (the script then keeps those TRACE and log lines).
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-100}"
for test in a_quorum_queue_replicates_and_survives_its_leaders_death \
    a_queue_dead_lettering_at_least_once_loses_no_dead_letter_to_leader_kills; do
    ANTRE_QUORUM_CYCLES="$cycles" cargo test -p antre --test cluster \
        "quorum_cluster::$test" -- --nocapture 2>&1 |
        grep -E "^quorum failover:|^at-least-once dead letters:|^test result|panicked|^TRACE|^\[n[0-9]\]"
done
