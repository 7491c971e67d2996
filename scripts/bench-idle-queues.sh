#!/usr/bin/env bash
# What idle quorum queues cost a 3-node cluster, antre beside RabbitMQ
# 3.10: declares N quorum queues (default 100,500; leaders spread over
# the nodes: each is declared through node i mod 3), waits 5 s, and
# measures the three nodes' CPU over SECONDS (default 20) with no client
# connected. Prints one line per broker and count, and the ratio:
#
#   rabbitmq 500 idle quorum queues: 3.1% of a core
#   antre 500 idle quorum queues: 47.5% of a core
#
# Usage: scripts/bench-idle-queues.sh [COUNTS [SECONDS]]   e.g. 100,500,1000 20
#        ANTRE_BIN=/path/to/antre scripts/bench-idle-queues.sh  (another build)
# Needs python3 with pika, and Debian's rabbitmq-server.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNTS=${1:-100,500}
SECONDS_=${2:-20}
OUT=$(mktemp -d /tmp/bench-idle-queues.XXXXXX)
chmod 755 "$OUT"
cd "$ROOT"
. scripts/lib/antre-cluster.sh
. scripts/lib/rabbitmq-cluster.sh
. scripts/lib/cpu.sh
if [ -z "${ANTRE_BIN:-}" ]; then
    cargo build --release -q -p antre
fi
ANTRE=${ANTRE_BIN:-$ROOT/target/release/antre}
: >"$OUT/rows"

ANTRE_PIDS=()
RABBIT_PIDS=()
stop_antre() {
    for p in "${ANTRE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ANTRE_PIDS=()
}
trap 'stop_antre; [ ${#RABBIT_PIDS[@]} = 0 ] || stop_rabbit_cluster qi; true' EXIT


# measure NAME N AMQP_BASE PIDS...: declares N quorum queues and appends
# the nodes' share of a core at rest to $OUT/rows.
measure() {
    local name=$1 n=$2 base=$3; shift 3
    python3 - "$n" "$base" <<'PY'
import sys
import pika
n, base = int(sys.argv[1]), int(sys.argv[2])
channels = []
for i in range(3):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", base + 1 + i))
    channels.append(conn.channel())
for q in range(n):
    channels[q % 3].queue_declare(f"idle-{q}", durable=True, arguments={"x-queue-type": "quorum"})
for ch in channels:
    ch.connection.close()
PY
    sleep 5
    local before after
    before=$(cpu_ticks "$@")
    sleep "$SECONDS_"
    after=$(cpu_ticks "$@")
    python3 -c "print(f'$name $n {($after - $before) / $HZ / $SECONDS_ * 100:.1f}')" >>"$OUT/rows"
}

for n in ${COUNTS//,/ }; do
    start_rabbit_cluster "$OUT" qi 5640
    measure rabbitmq "$n" 5640 "${RABBIT_PIDS[@]}"
    stop_rabbit_cluster qi
    RABBIT_PIDS=()
    rm -rf "$OUT"/antre-n*
    start_antre_cluster "$ANTRE" "$OUT" 740 bench-idle-queues-secret-0123456789
    measure antre "$n" 5740 "${ANTRE_PIDS[@]}"
    stop_antre
done

python3 - "$OUT/rows" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    broker, n, pct = line.split()
    rows[(broker, n)] = float(pct)
    print(f"{broker} {n} idle quorum queues: {pct}% of a core")
for (broker, n), pct in rows.items():
    if broker == "antre" and ("rabbitmq", n) in rows:
        r = rows[("rabbitmq", n)]
        print(f"{n} queues: antre/RabbitMQ CPU at rest {pct / r:.2f}x" if r else f"{n} queues: RabbitMQ used no CPU")
PY
echo "logs in $OUT"
