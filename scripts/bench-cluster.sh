#!/usr/bin/env bash
# A 3-node antre cluster against a 3-node RabbitMQ 3.10 cluster on this
# machine, side by side, with quorum queues: confirmed publish rate and CPU
# per message (all three nodes' CPU summed) for 1 and 10 queues, and
# publish->deliver latency at a fixed rate. Prints one table (ratios).
#
# Usage: scripts/bench-cluster.sh [options]
#   --duration S     seconds per scenario (default 10)
#   --size B         body size in bytes (default 1024)
#   --rate R         msg/s of the latency scenario (default 1000)
#   --no-antre       measure RabbitMQ only
#   --no-rabbitmq    measure antre only
#   --antre-bin PATH use this antre binary instead of building one
#   --out DIR        where the JSON reports and logs go
#
# Clients connect to the first node of each cluster, where the queues are
# declared, so both brokers' queue leaders start there. antre's nodes use
# AMQP 5801-5803, HTTP 15801-15803 and cluster ports 25801-25803; RabbitMQ's
# nodes are antre-rbc1..3@localhost on AMQP 5811-5813 (distribution
# 25811-25813), so nothing else on this machine is disturbed. Both clusters
# are stopped at the end. Failover time is measured by
# scripts/soak-quorum-failover.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=10
SIZE=1024
RATE=1000
WITH_ANTRE=1
WITH_RABBIT=1
ANTRE_BIN=""
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --no-antre) WITH_ANTRE=0; shift ;;
        --no-rabbitmq) WITH_RABBIT=0; shift ;;
        --antre-bin) ANTRE_BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
log() { echo "== $*" >&2; }
OUT=${OUT:-$ROOT/target/bench-cluster-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
log "building antre-bench (release)"
(cd "$ROOT" && cargo build --release -p antre-bench)
BENCH=$CARGO_TARGET_DIR/release/antre-bench
if [ $WITH_ANTRE = 1 ] && [ -z "$ANTRE_BIN" ]; then
    (cd "$ROOT" && cargo build --release -p antre)
    ANTRE_BIN=$CARGO_TARGET_DIR/release/antre
fi

wait_port() {
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    log "nothing listens on $1"; return 1
}

# ---- antre ---------------------------------------------------------------
ANTRE_PIDS=()
ANTRE_DATA=$(mktemp -d /tmp/antre-cluster-bench.XXXXXX)
start_antre() {
    local peers=n1=127.0.0.1:25801,n2=127.0.0.1:25802,n3=127.0.0.1:25803
    for i in 1 2 3; do
        mkdir -p "$ANTRE_DATA/n$i"
        ANTRE_CLUSTER_SECRET=bench-cluster-secret-0123456789 "$ANTRE_BIN" serve \
            --node-name "n$i" --cluster-listen "127.0.0.1:2580$i" --cluster-peers "$peers" \
            --amqp-listen "127.0.0.1:580$i" --http-listen "127.0.0.1:1580$i" \
            --data-dir "$ANTRE_DATA/n$i" >>"$OUT/antre-n$i.log" 2>&1 &
        ANTRE_PIDS+=($!)
    done
    for i in 1 2 3; do wait_port "580$i"; done
    # A change needs a leader: wait until a declare through n1 succeeds.
    for _ in $(seq 1 100); do
        if curl -sf -u guest:guest -X PUT -H 'content-type: application/json' \
            -d '{"durable":true}' "http://127.0.0.1:15801/api/queues/%2f/bench-cluster-probe" >/dev/null; then
            curl -sf -u guest:guest -X DELETE "http://127.0.0.1:15801/api/queues/%2f/bench-cluster-probe" >/dev/null || true
            return 0
        fi
        sleep 0.2
    done
    log "the antre cluster did not elect a leader"; return 1
}
stop_antre() {
    for p in "${ANTRE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${ANTRE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    ANTRE_PIDS=()
    rm -rf "$ANTRE_DATA"
}

# ---- RabbitMQ ------------------------------------------------------------
RABBIT_STARTED=0
RABBIT_PIDS=()
rnode() { echo "antre-rbc$1@localhost"; }
start_rabbit() {
    echo '[].' >"$OUT/rabbit-plugins"
    chmod 644 "$OUT/rabbit-plugins"
    printf 'loopback_users = none\n' >"$OUT/rabbit.conf"
    chmod 644 "$OUT/rabbit.conf"
    chmod 755 "$OUT"
    for i in 1 2 3; do
        local env=(HOME=/var/lib/rabbitmq RABBITMQ_NODE_PORT="581$i" RABBITMQ_NODENAME="$(rnode "$i")"
            RABBITMQ_DIST_PORT="2581$i" RABBITMQ_CONFIG_FILE="$OUT/rabbit.conf"
            RABBITMQ_ENABLED_PLUGINS_FILE="$OUT/rabbit-plugins"
            RABBITMQ_MNESIA_BASE="/tmp/antre-rbc$i-mnesia" RABBITMQ_LOG_BASE="/tmp/antre-rbc$i-log")
        rm -rf "/tmp/antre-rbc$i-mnesia" "/tmp/antre-rbc$i-log"
        # As in bench-vs-rabbitmq.sh: setpriv keeps the open-file limit
        # that Debian's su-based wrapper would reset.
        (cd /var/lib/rabbitmq && ulimit -n "$(ulimit -Hn)" \
            && setpriv --reuid rabbitmq --regid rabbitmq --init-groups \
                env "${env[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server -detached)
    done
    RABBIT_STARTED=1
    for i in 1 2 3; do
        for _ in $(seq 1 240); do rabbitmqctl -n "$(rnode "$i")" ping >/dev/null 2>&1 && break; sleep 0.5; done
        rabbitmqctl -n "$(rnode "$i")" await_startup --timeout 120 >/dev/null
    done
    for i in 2 3; do
        rabbitmqctl -n "$(rnode "$i")" stop_app >/dev/null
        rabbitmqctl -n "$(rnode "$i")" join_cluster "$(rnode 1)" >/dev/null
        rabbitmqctl -n "$(rnode "$i")" start_app >/dev/null
    done
    RABBIT_PIDS=()
    for i in 1 2 3; do
        RABBIT_PIDS+=("$(rabbitmqctl -n "$(rnode "$i")" eval 'os:getpid().' 2>/dev/null | tr -dc '0-9')")
    done
    rabbitmqctl -n "$(rnode 1)" cluster_status | grep -A4 'Running Nodes' >&2 || true
}
stop_rabbit() {
    if [ $RABBIT_STARTED = 1 ]; then
        for i in 3 2 1; do rabbitmqctl -n "$(rnode "$i")" stop >/dev/null 2>&1 || true; done
        RABBIT_STARTED=0
    fi
}
trap 'stop_antre; stop_rabbit' EXIT

scenarios() {
    local broker=$1 url=$2 pids=$3
    local common=(-u "$url" --broker "$broker" --broker-pid "$pids" --queue-type quorum
        --persistent -s "$SIZE" -z "$DURATION" --quiet)
    for q in 1 10; do
        log "confirmed publish and consume, $q quorum queue(s), on $broker"
        "$BENCH" run "${common[@]}" --queues "$q" -x "$q" -y "$q" -c 100 \
            --label "quorum-${q}q-confirm" --headline rate,cpu,p99 --json "$OUT/quorum-${q}q.$broker.json"
    done
    log "latency at $RATE msg/s, 1 quorum queue, on $broker"
    "$BENCH" run "${common[@]}" --queues 1 -x 1 -y 1 -c 100 -r "$RATE" \
        --label "quorum-latency-${RATE}" --headline p50,p99,cpu --json "$OUT/quorum-latency.$broker.json"
}

if [ $WITH_RABBIT = 1 ]; then
    log "starting a 3-node RabbitMQ cluster"
    start_rabbit
    scenarios rabbitmq "amqp://guest:guest@127.0.0.1:5811/%2f" "$(IFS=,; echo "${RABBIT_PIDS[*]}")"
    stop_rabbit
fi
if [ $WITH_ANTRE = 1 ]; then
    log "starting a 3-node antre cluster"
    start_antre
    scenarios antre "amqp://guest:guest@127.0.0.1:5801/%2f" "$(IFS=,; echo "${ANTRE_PIDS[*]}")"
    stop_antre
fi

echo
echo "3-node clusters, quorum queues, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores; reports in $OUT"
"$BENCH" compare "$OUT"
