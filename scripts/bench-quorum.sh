#!/usr/bin/env bash
# Quorum queues side by side: a 3-node RabbitMQ 3.10 cluster and a 3-node
# antre cluster on this machine, one after the other. For each queue count
# (1 and 10): as many producers (persistent 1 KiB messages, confirms with
# 100 in flight each) and consumers (acks every 100, prefetch 1000) as
# queues, all connected to node 1, for DURATION seconds. Prints the
# confirmed publish rate, the delivered rate and the CPU all three nodes
# used per confirmed message (from /proc), and the antre/RabbitMQ ratios.
# For antre it also counts the quorum queues' leader changes during each
# run (takeovers the nodes logged, beyond each new queue's first).
#
# Then a fixed-rate case: one queue, one producer (confirms, 100 in
# flight) and one consumer, RATE msg/s for DURATION seconds, reporting
# the publish->deliver latency p50/p99 of both clusters.
#
# Usage: scripts/bench-quorum.sh [--duration S] [--queues LIST] [--size B]
#                                [--confirms N] [--rate R|0]
#                                [--no-rabbitmq] [--no-antre]
#                                [--antre-bin PATH] [--antre-first]
#                                [--backlog N] [--messages N]
#                                [--type quorum|stream|stream-protocol]
#
# --confirms sets the publishers' confirm window (default 100): one queue
# with one publisher is bound by the latency of a commit, so the window
# decides how many publishes each Raft round carries. --antre-bin runs
# another build of antre (an A/B against a copy of an older release build).
# --backlog N also publishes N messages to a quorum queue without a
# consumer and reports each node's RSS (`--queues ''` for that case alone).
# --type stream runs the same cases on streams (replicated on both
# clusters; consumers start at the next offset) instead of quorum queues.
# --type stream-protocol measures RabbitMQ's stream protocol instead
# (RabbitMQ's stream plugin on 5621-5623, antre's --stream-listen on
# 5721-5723): `antre-bench stream` with rabbitmq-stream-client creates a
# replicated stream through node 1, publishes --messages N (default
# 300000) with confirms on its leader (the client asks the metadata), then
# one consumer reads them all from a replica; CPU is all three nodes'.
#
# RabbitMQ nodes qb1..qb3@localhost on AMQP 5611-5613 (distribution
# 25611-25613, management off); antre nodes on AMQP 5701-5703, HTTP
# 15701-15703, cluster 25701-25703. Everything started here is stopped at
# the end. Run it under `flock /work/bench.lock` on a shared machine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=10
QUEUES=1,10
SIZE=1024
RATE=5000
CONFIRMS=100
WITH_RABBIT=1
WITH_ANTRE=1
ANTRE_BIN=
ANTRE_FIRST=0
BACKLOG=0
QTYPE=quorum
MESSAGES=300000
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --queues) QUEUES=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --confirms) CONFIRMS=$2; shift 2 ;;
        --no-rabbitmq) WITH_RABBIT=0; shift ;;
        --no-antre) WITH_ANTRE=0; shift ;;
        --antre-bin) ANTRE_BIN=$2; shift 2 ;;
        --antre-first) ANTRE_FIRST=1; shift ;;
        --backlog) BACKLOG=$2; shift 2 ;;
        --type) QTYPE=$2; shift 2 ;;
        --messages) MESSAGES=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
cd "$ROOT"
. scripts/lib/side-by-side.sh
side_by_side_setup bench-quorum


rss_of() { # each pid's resident memory in MiB, joined by slashes
    local out=""
    for p in "$@"; do
        out="$out${out:+/}$(($(awk '/VmRSS/{print $2}' "/proc/$p/status") / 1024))"
    done
    echo "$out"
}

# Quorum queue takeovers the antre nodes logged so far (0 for RabbitMQ).
takeovers() {
    cat "$OUT"/antre-n*.log 2>/dev/null | grep -c "this node leads the quorum queue now" || true
}

# run_stream_protocol NAME PORT PIDS...: one stream-protocol run; appends
# a row to $OUT/rows (publish and consume rates, CPU of all nodes per
# message over both phases).
run_stream_protocol() {
    local name=$1 port=$2; shift 2
    local json=$OUT/$name-stream-protocol.json before after
    before=$(cpu_ticks "$@")
    "$BENCH" stream --protocol stream --port "$port" -n "$MESSAGES" -s "$SIZE" -c 1 \
        --broker "$name" --json "$json" >/dev/null 2>"$OUT/$name-stream-protocol.err" || true
    after=$(cpu_ticks "$@")
    python3 - "$json" "$name" "$before" "$after" "$HZ" >>"$OUT/rows" <<'EOF'
import json, sys
path, name, before, after, hz = sys.argv[1:]
r = json.load(open(path))
cpu = (int(after) - int(before)) / int(hz)
us = cpu * 1e6 / r["messages"]
print(f"{name} stream-protocol {r['publish_rate']:.0f} {r['consume_rate']:.0f} {us:.1f} - - -")
EOF
}

# run NAME URI PIDS...: one run per queue count; appends rows to $OUT/rows,
# then the fixed-rate case to $OUT/latency
run() {
    local name=$1 uri=$2; shift 2
    if [ "$QTYPE" = stream-protocol ]; then
        run_stream_protocol "$name" "${uri##*:}" "$@"
        return
    fi
    for q in ${QUEUES//,/ }; do
        local json=$OUT/$name-$q.json
        local before after lead_before lead_after
        lead_before=$(takeovers)
        before=$(cpu_ticks "$@")
        "$BENCH" run --uri "$uri" --queue-type "$QTYPE" --queues "$q" -x "$q" -y "$q" \
            --persistent -c "$CONFIRMS" -q 1000 -A 100 -s "$SIZE" -z "$DURATION" \
            --broker "$name" --label "$QTYPE-$q" --json "$json" --quiet >/dev/null 2>"$OUT/$name-$q.err" || true
        after=$(cpu_ticks "$@")
        lead_after=$(takeovers)
        # Each new queue's first leader is one takeover; more are changes.
        local changes=$((lead_after - lead_before - q))
        [ "$changes" -ge 0 ] || changes=0
        [ "$name" = antre ] || changes=-
        python3 - "$json" "$name" "$q" "$before" "$after" "$HZ" "$changes" >>"$OUT/rows" <<'EOF'
import json, sys
path, name, q, before, after, hz, changes = sys.argv[1:]
r = json.load(open(path))
cpu = (int(after) - int(before)) / int(hz)
confirmed = r["confirmed"]
rate = confirmed / r["publish_seconds"] if r["publish_seconds"] else 0
us = cpu * 1e6 / confirmed if confirmed else float("nan")
print(f"{name} {q} {rate:.0f} {r['deliver_rate']:.0f} {us:.1f} {r['nacked']} {len(r['errors'])} {changes}")
EOF
    done
    if [ "$BACKLOG" != 0 ]; then
        # A backlog: N messages and no consumer; each node's RSS before,
        # right after, and 10 s after publishing.
        local rss_before rss_after rss_later
        rss_before=$(rss_of "$@")
        "$BENCH" run --uri "$uri" --queue-type "$QTYPE" --queues 1 -x 1 -y 0 --queue-pattern backlog-%d \
            --persistent -c 1000 -s "$SIZE" -C "$BACKLOG" --keep-queues \
            --broker "$name" --label "$QTYPE-backlog" --json "$OUT/$name-backlog.json" --quiet >/dev/null 2>"$OUT/$name-backlog.err" || true
        rss_after=$(rss_of "$@")
        sleep 10
        rss_later=$(rss_of "$@")
        python3 - "$OUT/$name-backlog.json" "$name" "$rss_before" "$rss_after" "$rss_later" >>"$OUT/backlog" <<'EOF'
import json, sys
path, name, before, after, later = sys.argv[1:]
r = json.load(open(path))
rate = r["confirmed"] / r["publish_seconds"] if r["publish_seconds"] else 0
print(f"{name} {r['confirmed']} {rate:.0f} {before} {after} {later}")
EOF
    fi
    if [ "$RATE" != 0 ]; then
        local json=$OUT/$name-rate.json
        "$BENCH" run --uri "$uri" --queue-type "$QTYPE" --queues 1 -x 1 -y 1 \
            --persistent -c 100 -q 1000 -A 100 -s "$SIZE" -z "$DURATION" -r "$RATE" \
            --broker "$name" --label "$QTYPE-rate-$RATE" --json "$json" --quiet >/dev/null 2>"$OUT/$name-rate.err" || true
        python3 - "$json" "$name" >>"$OUT/latency" <<'EOF'
import json, sys
path, name = sys.argv[1:]
r = json.load(open(path))
l = r["latency"]
rate = r["confirmed"] / r["publish_seconds"] if r["publish_seconds"] else 0
print(f"{name} {rate:.0f} {r['deliver_rate']:.0f} {l['p50_us'] / 1e3:.2f} {l['p99_us'] / 1e3:.2f}")
EOF
    fi
}

RABBIT_PIDS=()
stop_rabbit() { stop_rabbit_cluster qb; }
ANTRE_PIDS=()
trap 'stop_antre_cluster; [ $WITH_RABBIT = 1 ] && stop_rabbit; true' EXIT

rabbit_node_conf() {
    if [ "$QTYPE" = stream-protocol ]; then
        printf 'stream.listeners.tcp.1 = 127.0.0.1:%s\nstream.advertised_host = 127.0.0.1\nstream.advertised_port = %s\n' \
            $((5620 + $1)) $((5620 + $1))
    fi
}

bench_rabbitmq() {
    if [ "$QTYPE" = stream-protocol ]; then
        RABBIT_PLUGINS="[rabbitmq_stream]"
    fi
    start_rabbit_cluster "$OUT" qb 5610
    if [ "$QTYPE" = stream-protocol ]; then
        run rabbitmq "stream:5621" "${RABBIT_PIDS[@]}"
    else
        run rabbitmq "amqp://guest:guest@127.0.0.1:5611/%2f" "${RABBIT_PIDS[@]}"
    fi
    stop_rabbit
}

bench_antre() {
    start_antre_cluster "$ANTRE" "$OUT" 700 bench-quorum-secret-0123456789
    if [ "$QTYPE" = stream-protocol ]; then
        run antre "stream:5721" "${ANTRE_PIDS[@]}"
    else
        run antre "amqp://guest:guest@127.0.0.1:5701/%2f" "${ANTRE_PIDS[@]}"
    fi
    stop_antre_cluster
}

# Each broker runs on a machine the other has left; --antre-first swaps
# the order, to see how much the order itself moves the figures.
if [ $ANTRE_FIRST = 1 ] && [ $WITH_ANTRE = 1 ]; then bench_antre; fi
if [ $WITH_RABBIT = 1 ]; then bench_rabbitmq; fi
if [ $ANTRE_FIRST = 0 ] && [ $WITH_ANTRE = 1 ]; then bench_antre; fi

echo "broker queues confirmed/s delivered/s cpu-us/msg(3 nodes) nacked errors leader-changes"
cat "$OUT/rows"
if [ -s "$OUT/backlog" ]; then
    echo "backlog without consumer: broker confirmed msg/s RSS-MiB-before RSS-after RSS-10s-later (per node)"
    cat "$OUT/backlog"
fi
if [ -s "$OUT/latency" ]; then
    echo "fixed rate $RATE msg/s, 1 queue: broker confirmed/s delivered/s p50-ms p99-ms (publish->deliver)"
    cat "$OUT/latency"
fi
if [ $WITH_RABBIT = 1 ] && [ $WITH_ANTRE = 1 ]; then
    python3 - "$OUT/rows" <<'EOF'
import sys
rows = {}
for line in open(sys.argv[1]):
    b, q, rate, drate, us, *_ = line.split()
    rows[(b, q)] = (float(rate), float(us))
for (b, q), (rate, us) in sorted(rows.items()):
    if b == "antre" and ("rabbitmq", q) in rows:
        r_rate, r_us = rows[("rabbitmq", q)]
        print(f"queues {q}: antre/RabbitMQ confirmed rate {rate / r_rate:.2f}x, CPU per message {us / r_us:.2f}x")
EOF
fi
echo "reports in $OUT"
