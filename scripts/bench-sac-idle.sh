#!/usr/bin/env bash
# What a super stream's single-active-consumer groups cost a 3-node antre
# cluster at rest: starts the cluster, creates a super stream of
# PARTITIONS partitions (default 30), measures the three nodes' CPU over
# SECONDS (default 20) with no consumer, then with one rstream
# SuperStreamConsumer per node in one group (each node reports its
# members to every partition's leader, and each leader proves it still
# leads before answering). Prints:
#
#   partitions=30 no consumers: brokers 1.2% of a core
#   partitions=30 with 3 SAC consumers: brokers 10.1% of a core
#
# RabbitMQ 3.10 has no super streams or single active consumer on
# streams (both came in 3.11), so there is nothing to run beside it.
#
# Usage: scripts/bench-sac-idle.sh [PARTITIONS [SECONDS]]
#        ANTRE_BIN=/path/to/antre scripts/bench-sac-idle.sh  (another build)
# Needs python3 with rstream (pip install rstream==1.1.1).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PARTITIONS=${1:-30}
SECONDS_=${2:-20}
OUT=$(mktemp -d /tmp/bench-sac-idle.XXXXXX)
cd "$ROOT"
. scripts/lib/antre-cluster.sh
if [ -z "${ANTRE_BIN:-}" ]; then
    cargo build --release -q -p antre
fi
ANTRE=${ANTRE_BIN:-$ROOT/target/release/antre}
source scripts/lib/cpu.sh

ANTRE_PIDS=()
CONSUMERS=()
cleanup() {
    for p in "${CONSUMERS[@]}" "${ANTRE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# The share of a core the nodes used over SECONDS_.
measure() {
    local before after
    before=$(cpu_ticks "${ANTRE_PIDS[@]}")
    sleep "$SECONDS_"
    after=$(cpu_ticks "${ANTRE_PIDS[@]}")
    python3 -c "print(f'{($after - $before) / $HZ / $SECONDS_ * 100:.1f}')"
}

start_antre_cluster "$ANTRE" "$OUT" 760 bench-sac-idle-secret-0123456789

# The first consumer creates the super stream; it leaves again, so that
# the first figure is the partitions' own cost.
timeout 60 python3 scripts/sac_idle_consumer.py 127.0.0.1 5781 idle "$PARTITIONS" >"$OUT/create.out" 2>&1 &
creator=$!
for _ in $(seq 600); do
    grep -q ready "$OUT/create.out" 2>/dev/null && break
    sleep 0.1
done
grep -q ready "$OUT/create.out" || { echo "the super stream was not created:" >&2; cat "$OUT/create.out" >&2; exit 1; }
kill "$creator"; wait "$creator" 2>/dev/null || true
sleep 3
echo "partitions=$PARTITIONS no consumers: brokers $(measure)% of a core"

for i in 1 2 3; do
    python3 scripts/sac_idle_consumer.py 127.0.0.1 $((5780 + i)) idle "$PARTITIONS" >"$OUT/c$i.out" 2>&1 &
    CONSUMERS+=($!)
done
for i in 1 2 3; do
    for _ in $(seq 600); do
        grep -q ready "$OUT/c$i.out" 2>/dev/null && break
        sleep 0.1
    done
    grep -q ready "$OUT/c$i.out" || { echo "consumer $i did not subscribe:" >&2; cat "$OUT/c$i.out" >&2; exit 1; }
done
sleep 3
echo "partitions=$PARTITIONS with 3 SAC consumers: brokers $(measure)% of a core"
probes=$(curl -sf -u guest:guest http://127.0.0.1:15761/api/nodes |
    python3 -c 'import json,sys; print(sum(n.get("liveness_probes") or 0 for n in json.load(sys.stdin)))')
echo "liveness probes n1 made since it started: $probes"
echo "logs in $OUT"
