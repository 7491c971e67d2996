#!/usr/bin/env bash
# Publishes to quorum queues through a node that does not lead them: a
# 3-node release cluster, 10 quorum queues declared (and so led) on node 1,
# then 10 producers (persistent 1 KiB messages, confirms with 100 in
# flight each) and 10 consumers (acks every 100, prefetch 1000) through
# node 2 for 8 seconds. Node 2 forwards every publish to node 1 over the
# data link, and node 1 pushes every delivery back. Prints the confirmed
# rate and the CPU all three nodes used per confirmed message.
#
# With a second binary it is an A/B: the two alternate, RUNS times each
# (default 3), each run on a fresh cluster, as the forwarding path's
# changes were measured (BENCHMARKS.md).
#
# Usage: scripts/bench-forwarding-quorum.sh [--runs N] ANTRE_A [ANTRE_B]
#
# Nodes on AMQP 5801-5803, HTTP 15801-15803, cluster 25801-25803; data in
# a temporary directory, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3
if [ "${1:-}" = --runs ]; then
    runs=$2
    shift 2
fi
a=${1:?usage: scripts/bench-forwarding-quorum.sh [--runs N] ANTRE_A [ANTRE_B]}
b=${2:-}
bench=$PWD/target/release/antre-bench
[ -x "$bench" ] || cargo build -q --release -p antre-bench
source scripts/lib/antre-cluster.sh
source scripts/lib/cpu.sh
out=$(mktemp -d /tmp/bench-forwarding-quorum.XXXXXX)
trap 'stop_antre_cluster >/dev/null 2>&1 || true; rm -rf "$out"' EXIT

one() { # label binary
    local label=$1 bin=$2 dir="$out/$1"
    rm -rf "$dir"
    mkdir -p "$dir"
    ANTRE_PIDS=()
    start_antre_cluster "$bin" "$dir" 800 bench-cluster-secret-0123456789 >/dev/null
    local args=(--queue-type quorum --queues 10 -x 10 -y 10 --persistent -c 100 -q 1000 -A 100 -s 1024)
    # Declared through node 1, which then leads them.
    "$bench" run --uri amqp://guest:guest@127.0.0.1:5801/%2f "${args[@]}" -z 2 --keep-queues >/dev/null 2>&1
    local led before after
    led=$(grep -c "leads the quorum queue now" "$dir/antre-n1.log" || true)
    before=$(cpu_ticks "${ANTRE_PIDS[@]}")
    "$bench" run --uri amqp://guest:guest@127.0.0.1:5802/%2f "${args[@]}" -z 8 --no-reset --keep-queues \
        --json "$dir/run.json" >"$dir/run.txt" 2>&1
    after=$(cpu_ticks "${ANTRE_PIDS[@]}")
    stop_antre_cluster >/dev/null
    python3 - "$label" "$dir/run.json" "$((after - before))" "$HZ" "$led" <<'EOF'
import json, sys
label, path, ticks, hz, led = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
j = json.load(open(path))
us = ticks / hz * 1e6 / max(j["confirmed"], 1)
print(f"{label}: {j['publish_rate']:.0f} confirmed/s, {us:.1f} us CPU/msg (3 nodes), "
      f"nacked {j['nacked']}, queues led by node 1: {led}")
EOF
}

for r in $(seq 1 "$runs"); do
    one "A-$r" "$a"
    if [ -n "$b" ]; then
        one "B-$r" "$b"
    fi
done
