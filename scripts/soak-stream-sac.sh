#!/usr/bin/env bash
# Single active consumer over the stream protocol on a 3-node antre
# cluster (real processes, a fault-injecting proxy on every link), one
# member per node: ROUNDS times (default 20) kills -9 the active member's
# node, cuts it off (every byte held), and kills the stream's leader,
# repairing each time and joining a new member on a restarted node; then
# checks, from the members' clients, that no two members were ever active
# at once and that each message published after a fault was read by the
# member active then. Prints one line of figures:
#
#   single active consumer through N rounds of kills and cuts: ...
#
# It is crates/antre/tests/cluster_stream_sac.rs's loop (which CI runs
# with 1 round), with a round count from ANTRE_SAC_ROUNDS.
#
# Usage: scripts/soak-stream-sac.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-20}"
ANTRE_SAC_ROUNDS="$rounds" cargo test -p antre --test cluster \
    cluster_stream_sac::one_member_is_active_at_a_time_through_kills_and_cuts -- --nocapture 2>&1 |
    grep -E "^single active consumer through|^test result|panicked"
