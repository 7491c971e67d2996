#!/usr/bin/env bash
# What a metadata change costs a 3-node cluster as its queues add up, side
# by side: a 3-node RabbitMQ 3.10 cluster and a 3-node antre cluster on
# this machine, one after the other. One pika client declares N durable
# classic queues (or --type quorum/transient) through node 1, one at a
# time, waiting for each declare-ok as applications do at start-up.
# Prints each broker's rate for every block of BLOCK declares (does it
# fall as the queues add up?) and over the whole run, and the antre /
# RabbitMQ ratios.
#
# Usage: scripts/bench-cluster-declares.sh [--queues N] [--block B]
#            [--type classic|quorum|transient] [--antre-bin PATH]
#            [--no-rabbitmq]
#
# RabbitMQ nodes qd1..qd3@localhost on AMQP 5631-5633; antre nodes on AMQP
# 5741-5743, HTTP 15741-15743, cluster 25741-25743. Run it under
# `flock /work/bench.lock` on a shared machine. Needs pika
# (`pip install pika`).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUEUES=6000
BLOCK=1000
QTYPE=classic
WITH_RABBIT=1
while [ $# -gt 0 ]; do
    case "$1" in
        --queues) QUEUES=$2; shift 2 ;;
        --block) BLOCK=$2; shift 2 ;;
        --type) QTYPE=$2; shift 2 ;;
        --antre-bin) ANTRE_BIN=$2; shift 2 ;;
        --no-rabbitmq) WITH_RABBIT=0; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
cd "$ROOT"
. scripts/lib/side-by-side.sh
side_by_side_setup bench-cluster-declares

RABBIT_PIDS=()
ANTRE_PIDS=()
trap 'stop_antre_cluster; [ $WITH_RABBIT = 1 ] && stop_rabbit_cluster qd; true' EXIT

if [ $WITH_RABBIT = 1 ]; then
    start_rabbit_cluster "$OUT" qd 5630
    python3 scripts/cluster_declares.py rabbitmq 5631 "$QUEUES" "$BLOCK" "$QTYPE" >>"$OUT/rows"
    stop_rabbit_cluster qd
fi
start_antre_cluster "$ANTRE" "$OUT" 740 bench-declares-secret-0123456789
python3 scripts/cluster_declares.py antre 5741 "$QUEUES" "$BLOCK" "$QTYPE" >>"$OUT/rows"
stop_antre_cluster

echo "declares/s of $QTYPE queues through node 1, per block of $BLOCK, then overall"
cat "$OUT/rows"
python3 - "$OUT/rows" <<'PY'
import sys
rows = {l.split()[0]: [float(x) for x in l.split()[1:]] for l in open(sys.argv[1]) if l.strip()}
if "rabbitmq" in rows and "antre" in rows:
    r, a = rows["rabbitmq"], rows["antre"]
    print("ratio (antre / RabbitMQ):", " ".join(f"{x / y:.2f}x" for x, y in zip(a, r)))
PY
