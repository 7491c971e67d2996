#!/usr/bin/env bash
# At-least-once dead-lettering side by side: a 3-node RabbitMQ 3.10
# cluster and a 3-node antre cluster on this machine, one after the other.
# `antre-bench dead-letter` declares a quorum queue with
# x-dead-letter-strategy at-least-once (reject-publish) dead-lettering
# through a fanout into a second quorum queue, publishes N persistent
# messages with confirms, then one consumer rejects them all (nack
# without requeue, multiple every 100) and the run ends when the
# dead-letter queue holds all N. Prints the dead-letter rate, the CPU all
# three nodes used per message over the whole run (publish, confirm,
# reject, dead-letter), and the antre/RabbitMQ ratios.
#
# Usage: scripts/bench-dead-letter.sh [--messages N] [--size B]
#                                     [--at-most-once] [--no-rabbitmq]
#                                     [--no-antre] [--antre-bin PATH]
#
# RabbitMQ nodes qd1..qd3@localhost on AMQP 5631-5633 (its default
# dead-letter worker settings); antre nodes on AMQP 5741-5743. Run it
# under `flock /work/bench.lock` on a shared machine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MESSAGES=50000
SIZE=1024
STRATEGY=
WITH_RABBIT=1
WITH_ANTRE=1
ANTRE_BIN=
while [ $# -gt 0 ]; do
    case "$1" in
        --messages) MESSAGES=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --at-most-once) STRATEGY=--at-most-once; shift ;;
        --no-rabbitmq) WITH_RABBIT=0; shift ;;
        --no-antre) WITH_ANTRE=0; shift ;;
        --antre-bin) ANTRE_BIN=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
cd "$ROOT"
. scripts/lib/side-by-side.sh
side_by_side_setup bench-dead-letter


# run NAME URI PIDS...: one run; appends a row to $OUT/rows.
run() {
    local name=$1 uri=$2; shift 2
    local json=$OUT/$name.json before after
    before=$(cpu_ticks "$@")
    "$BENCH" dead-letter --uri "$uri" -n "$MESSAGES" -s "$SIZE" $STRATEGY \
        --broker "$name" --json "$json" >"$OUT/$name.out" 2>"$OUT/$name.err" || true
    after=$(cpu_ticks "$@")
    python3 - "$json" "$name" "$before" "$after" "$HZ" >>"$OUT/rows" <<'PY'
import json, os, sys
path, name, before, after, hz = sys.argv[1:]
if not os.path.exists(path):
    print(f"{name} failed - - - -")
    sys.exit()
r = json.load(open(path))
us = (int(after) - int(before)) / int(hz) * 1e6 / r["messages"]
print(f"{name} {r['publish_rate']:.0f} {r['dead_letter_rate']:.0f} {r['dead_letter_seconds']:.2f} {us:.1f} {r['dead_lettered']}")
PY
}

RABBIT_PIDS=()
ANTRE_PIDS=()
trap 'stop_antre_cluster; [ $WITH_RABBIT = 1 ] && stop_rabbit_cluster qd; true' EXIT

if [ $WITH_RABBIT = 1 ]; then
    start_rabbit_cluster "$OUT" qd 5630
    run rabbitmq "amqp://guest:guest@127.0.0.1:5631/%2f" "${RABBIT_PIDS[@]}"
    stop_rabbit_cluster qd
fi
if [ $WITH_ANTRE = 1 ]; then
    start_antre_cluster "$ANTRE" "$OUT" 740 bench-dead-letter-secret-0123456789
    run antre "amqp://guest:guest@127.0.0.1:5741/%2f" "${ANTRE_PIDS[@]}"
    stop_antre_cluster
fi

echo "broker published/s dead-lettered/s seconds cpu-us/msg(3 nodes) in-dead-letter-queue"
cat "$OUT/rows"
python3 - "$OUT/rows" <<'PY'
import sys
rows = {l.split()[0]: l.split() for l in open(sys.argv[1])}
a, r = rows.get("antre"), rows.get("rabbitmq")
if a and r and a[1] != "failed" and r[1] != "failed":
    print(f"antre/RabbitMQ dead-letter rate {float(a[2]) / float(r[2]):.2f}x, "
          f"CPU per message {float(a[4]) / float(r[4]):.2f}x")
PY
echo "reports in $OUT"
