#!/usr/bin/env bash
# Runs the same AMQP scenarios against RabbitMQ and antre, alternating, on
# this machine, and prints one table: rates, latency, broker CPU per message.
#
# Usage: scripts/bench-vs-rabbitmq.sh [options]
#   --duration S     seconds per throughput scenario (default 10)
#   --sizes LIST     body sizes, comma-separated (default 16,1024)
#   --only LIST      scenarios to run, comma-separated: transient,confirm,
#                    fanout,many,latency (default all of them; "none" with
#                    --long runs only scenarios 6 and 7)
#   --long           also run backlog and restart (scenarios 6 and 7)
#   --backlog N      messages in the backlog scenarios (default 1000000)
#   --memory N       also run the memory scenarios 8-10 with N messages of
#                    1 KiB: a persistent backlog in one queue, the same
#                    spread over 1000 queues, and a transient backlog, each
#                    published then drained on a freshly started broker,
#                    peak RSS sampled (e.g. --memory 10000000; "--only none"
#                    runs only these; "--only mem1000,memtransient" picks)
#   --no-antre       measure RabbitMQ only (e.g. when antre does not build)
#   --no-rabbitmq    measure antre only
#   --antre-bin PATH use this antre binary instead of building one
#   --client C       which client drives the brokers: builtin (antre-bench's
#                    own, the default), lapin (the independent lapin crate,
#                    scenarios 1-4 only, rows labelled lapin-...) or both
#   --lapin-many N   producers = consumers = queues of lapin's scenario 4
#                    (default 50; lapin runs one I/O thread per connection)
#   --out DIR        where the JSON reports, charts and logs go
#                    (default target/bench-<date>)
#
# RABBIT_PORT and RABBIT_NODE choose RabbitMQ's port and node name
# (default 5682, rabbit@localhost; distribution port RABBIT_PORT+20000),
# e.g. to run beside another RabbitMQ on this machine.
#
# Needs root for apt-get when RabbitMQ is missing. RabbitMQ runs on side
# ports (AMQP 5682, distribution 25682) and antre on 127.0.0.1:5692, so an
# existing broker on 5672 is left alone. Both brokers are stopped at the end
# if this script started them.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=10
SIZES=16,1024
ONLY=transient,confirm,fanout,many,latency
LONG=0
BACKLOG=1000000
MEMORY=0
WITH_ANTRE=1
WITH_RABBIT=1
OUT=""
ANTRE_BIN=""
CLIENT=builtin
LAPIN_MANY=50
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --sizes) SIZES=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --long) LONG=1; shift ;;
        --backlog) BACKLOG=$2; shift 2 ;;
        --no-antre) WITH_ANTRE=0; shift ;;
        --no-rabbitmq) WITH_RABBIT=0; shift ;;
        --antre-bin) ANTRE_BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --client) CLIENT=$2; shift 2 ;;
        --lapin-many) LAPIN_MANY=$2; shift 2 ;;
        --memory) MEMORY=$2; shift 2 ;;
        -h|--help) sed -n '2,37p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

case "$CLIENT" in
    builtin|lapin|both) ;;
    *) echo "--client must be builtin, lapin or both" >&2; exit 2 ;;
esac

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$CARGO_TARGET_DIR/bench-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
BENCH=$CARGO_TARGET_DIR/release/antre-bench
ANTRE=${ANTRE_BIN:-$CARGO_TARGET_DIR/release/antre}
RABBIT_NODE=${RABBIT_NODE:-rabbit@localhost}
RABBIT_PORT=${RABBIT_PORT:-5682}
RABBIT_URL="amqp://guest:guest@127.0.0.1:$RABBIT_PORT/%2f"
ANTRE_ADDR=127.0.0.1:5692
ANTRE_URL="amqp://guest:guest@$ANTRE_ADDR/%2f"

log() { echo "== $*" >&2; }

# ---- build ---------------------------------------------------------------
log "building antre-bench (release)"
(cd "$ROOT" && cargo build --release -p antre-bench)
if [ $WITH_ANTRE = 1 ] && [ -z "$ANTRE_BIN" ]; then
    log "building antre (release)"
    if ! (cd "$ROOT" && cargo build --release -p antre); then
        log "antre does not build: measuring RabbitMQ only"
        WITH_ANTRE=0
    fi
fi

# ---- RabbitMQ ------------------------------------------------------------
RABBIT_STARTED=0
RABBIT_PID=""
rabbitctl() { rabbitmqctl -n "$RABBIT_NODE" "$@"; }
rabbit_pid() {
    # The beam.smp process that does the work, as the node itself reports it.
    rabbitctl eval 'os:getpid().' 2>/dev/null | tr -dc '0-9'
}
start_rabbit() {
    local env=(RABBITMQ_NODE_PORT="$RABBIT_PORT" RABBITMQ_NODENAME="$RABBIT_NODE"
        RABBITMQ_DIST_PORT=$((RABBIT_PORT + 20000)))
    if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
        # Debian's wrapper starts the node through su, which resets the
        # open-file limit to 1024 and caps RabbitMQ at 927 connections (the
        # 1000-queue and idle scenarios need more): start the server script
        # as the rabbitmq user directly, keeping this shell's hard limit.
        (cd /var/lib/rabbitmq && ulimit -n "$(ulimit -Hn)" \
            && setpriv --reuid rabbitmq --regid rabbitmq --init-groups \
                env HOME=/var/lib/rabbitmq "${env[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server -detached)
    else
        env "${env[@]}" rabbitmq-server -detached
    fi
    RABBIT_STARTED=1
}
wait_rabbit() {
    # Right after `-detached` the node may not be registered with epmd yet,
    # and await_startup then fails at once instead of waiting: ping first.
    for _ in $(seq 1 240); do
        rabbitctl ping >/dev/null 2>&1 && break
        sleep 0.5
    done
    rabbitctl await_startup --timeout 120 >/dev/null
    RABBIT_PID=$(rabbit_pid)
}
stop_rabbit() {
    if [ $RABBIT_STARTED = 1 ]; then
        rabbitctl stop >/dev/null 2>&1 || true
        RABBIT_STARTED=0
    fi
}
if [ $WITH_RABBIT = 1 ]; then
    if ! command -v rabbitmq-server >/dev/null; then
        log "installing rabbitmq-server"
        apt-get update && apt-get install -y rabbitmq-server
        # The package starts a node on 5672 where systemd or init runs; ours
        # is separate, on side ports.
    fi
    if rabbitctl status >/dev/null 2>&1; then
        log "RabbitMQ node $RABBIT_NODE already running: using it (and leaving it running)"
    else
        log "starting RabbitMQ on $RABBIT_PORT"
        start_rabbit
    fi
    wait_rabbit
    log "RabbitMQ $(rabbitctl version 2>/dev/null) pid $RABBIT_PID"
fi

# ---- antre ---------------------------------------------------------------
ANTRE_PID=""
ANTRE_DATA=$(mktemp -d /tmp/antre-bench-data.XXXXXX)
start_antre() {
    "$ANTRE" serve --amqp-listen "$ANTRE_ADDR" --http-listen off --data-dir "$ANTRE_DATA" >>"$OUT/antre.log" 2>&1 &
    ANTRE_PID=$!
}
wait_antre() {
    for _ in $(seq 1 600); do
        if grep -q "listening on amqp://" "$OUT/antre.log" 2>/dev/null \
            && (exec 3<>"/dev/tcp/${ANTRE_ADDR%:*}/${ANTRE_ADDR#*:}") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$ANTRE_PID" 2>/dev/null; then
            log "antre exited; its log:"; tail -20 "$OUT/antre.log" >&2; return 1
        fi
        sleep 0.1
    done
    log "antre did not start listening in 60 s"; return 1
}
stop_antre() {
    if [ -n "$ANTRE_PID" ]; then
        kill -TERM "$ANTRE_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$ANTRE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$ANTRE_PID" 2>/dev/null || true
        wait "$ANTRE_PID" 2>/dev/null || true
        ANTRE_PID=""
    fi
}
if [ $WITH_ANTRE = 1 ]; then
    log "starting antre on $ANTRE_ADDR (data in $ANTRE_DATA)"
    start_antre
    if ! wait_antre; then
        log "antre did not start: measuring RabbitMQ only"
        stop_antre
        WITH_ANTRE=0
    fi
fi

cleanup() {
    stop_antre
    stop_rabbit
    rm -rf "$ANTRE_DATA"
}
trap cleanup EXIT

BROKERS=()
[ $WITH_RABBIT = 1 ] && BROKERS+=(rabbitmq)
[ $WITH_ANTRE = 1 ] && BROKERS+=(antre)
[ ${#BROKERS[@]} -gt 0 ] || { log "no broker to measure"; exit 1; }
url_of() { if [ "$1" = rabbitmq ]; then echo "$RABBIT_URL"; else echo "$ANTRE_URL"; fi; }
pid_of() { if [ "$1" = rabbitmq ]; then echo "$RABBIT_PID"; else echo "$ANTRE_PID"; fi; }

# bench LABEL HEADLINE BROKER [run options...]: one run, its JSON and chart in
# $OUT, with antre-bench's own client, or with lapin when $DRIVER is lapin.
DRIVER=run
bench() {
    local label=$1 headline=$2 broker=$3; shift 3
    log "$label on $broker"
    "$BENCH" "$DRIVER" --quiet -u "$(url_of "$broker")" --broker "$broker" --broker-pid "$(pid_of "$broker")" \
        --label "$label" --headline "$headline" \
        --json "$OUT/$label.$broker.json" --chart "$OUT/$label.$broker.svg" "$@" \
        >"$OUT/$label.$broker.txt" 2>&1 || log "$label on $broker failed: $(tail -3 "$OUT/$label.$broker.txt")"
    cat "$OUT/$label.$broker.txt" >&2
}
# scenario LABEL HEADLINE [run options...]: the same run on each broker in turn.
scenario() {
    local label=$1 headline=$2; shift 2
    for b in "${BROKERS[@]}"; do bench "$label" "$headline" "$b" "$@"; done
}
wants() { [[ ",$ONLY," == *",$1,"* ]]; }

Z=(-z "$DURATION")
for size in ${SIZES//,/ }; do
    [ "$CLIENT" = lapin ] && break
    wants transient && scenario "1-transient-${size}B" rate,cpu "${Z[@]}" -s "$size" -x 1 -y 1
    wants confirm && scenario "2-persistent-confirm-${size}B" rate,cpu "${Z[@]}" -s "$size" -x 1 -y 1 \
        --persistent -c 1000
    wants fanout && scenario "3-fanout-10q-${size}B" rate,cpu "${Z[@]}" -s "$size" -x 1 -y 10 \
        --queues 10 -e antre-bench-fanout -t fanout
    wants many && scenario "4-many-50x50-${size}B" rate,cpu "${Z[@]}" -s "$size" -x 50 -y 50 --queues 50
    wants latency && scenario "5-latency-10k-${size}B" p50,p99,cpu "${Z[@]}" -s "$size" -x 1 -y 1 -r 10000
done

# The same scenarios 1-4 driven by lapin (`antre-bench lapin`), labelled lapin-*.
if [ "$CLIENT" != builtin ]; then
    DRIVER=lapin
    M=$LAPIN_MANY
    for size in ${SIZES//,/ }; do
        wants transient && scenario "lapin-1-transient-${size}B" rate,cpu "${Z[@]}" -s "$size" -x 1 -y 1
        wants confirm && scenario "lapin-2-persistent-confirm-${size}B" rate,cpu "${Z[@]}" -s "$size" \
            -x 1 -y 1 --persistent -c 1000
        wants fanout && scenario "lapin-3-fanout-10q-${size}B" rate,cpu "${Z[@]}" -s "$size" -x 1 -y 10 \
            --queues 10 -e antre-bench-fanout -t fanout
        wants many && scenario "lapin-4-many-${M}x${M}-${size}B" rate,cpu "${Z[@]}" -s "$size" \
            -x "$M" -y "$M" --queues "$M"
    done
    DRIVER=run
fi

if [ $LONG = 1 ]; then
    Q=(--queues 1 --queue-pattern antre-bench-backlog -s 1024 --persistent)
    for b in "${BROKERS[@]}"; do
        # A fresh process, so that the RSS measured below is the backlog's,
        # not heap that earlier scenarios' backlogs left behind (neither
        # allocator gives all of it back to the OS).
        log "restarting $b for a clean memory baseline"
        if [ "$b" = rabbitmq ]; then
            rabbitctl stop >/dev/null; RABBIT_STARTED=0; start_rabbit; wait_rabbit
        else
            stop_antre; start_antre; wait_antre
        fi
        # 6. backlog: publish with no consumer, then drain; RSS sampled throughout.
        bench "6-backlog-publish-1KiB" publish_rate,rss,cpu "$b" "${Q[@]}" -x 1 -y 0 -c 1000 \
            -C "$BACKLOG" --keep-queues -z 3600
        bench "6-backlog-drain-1KiB" deliver_rate,rss,cpu "$b" "${Q[@]}" -x 0 -y 1 --no-reset \
            -D "$BACKLOG" -z 3600
        # 7. restart: the same backlog again, then a broker restart, timed
        # from the start command until a passive declare counts every message.
        bench "7-restart-fill-1KiB" publish_rate "$b" "${Q[@]}" -x 1 -y 0 -c 1000 \
            -C "$BACKLOG" --keep-queues -z 3600
        log "restarting $b with $BACKLOG messages queued"
        if [ "$b" = rabbitmq ]; then
            rabbitctl stop >/dev/null; RABBIT_STARTED=0
            t0=$(date +%s.%N); start_rabbit
        else
            stop_antre
            t0=$(date +%s.%N); start_antre
        fi
        offset=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.3f", a - b }')
        "$BENCH" wait-count -u "$(url_of "$b")" --queue antre-bench-backlog --count "$BACKLOG" \
            --timeout 120 --offset "$offset" --broker "$b" --label 7-restart-1M-1KiB --json "$OUT/7-restart.$b.json" \
            || log "$b did not recover the backlog"
        if [ "$b" = rabbitmq ]; then wait_rabbit; else wait_antre; fi
        # Drain-free cleanup: delete the queue with a zero-length run.
        "$BENCH" run --quiet -u "$(url_of "$b")" -x 0 -y 0 -z 0 --queue-pattern antre-bench-backlog \
            --durable >/dev/null || true
    done
fi

fresh() {
    # A fresh process, so that the RSS measured is this scenario's own.
    log "restarting $1 for a clean memory baseline"
    if [ "$1" = rabbitmq ]; then
        rabbitctl stop >/dev/null; RABBIT_STARTED=0; start_rabbit; wait_rabbit
    else
        stop_antre; rm -rf "$ANTRE_DATA"; mkdir -p "$ANTRE_DATA"; start_antre; wait_antre
    fi
}
if [ "$MEMORY" -gt 0 ]; then
    N=$MEMORY
    for b in "${BROKERS[@]}"; do
        # 8. a persistent backlog of N x 1 KiB in one queue.
        if wants mem1 || [ "$ONLY" = none ]; then
        fresh "$b"
        M=(--queues 1 --queue-pattern antre-bench-mem -s 1024 --persistent -z 86400)
        bench "8-backlog-1q-publish" publish_rate,rss "$b" "${M[@]}" -x 1 -y 0 -c 1000 -C "$N" --keep-queues
        bench "8-backlog-1q-drain" deliver_rate,rss "$b" "${M[@]}" -x 0 -y 1 --no-reset -D "$N"
        fi
        # 9. the same spread over 1000 queues (one producer and consumer each).
        if wants mem1000 || [ "$ONLY" = none ]; then
        fresh "$b"
        M=(--queues 1000 --queue-pattern antre-bench-mem-%d -s 1024 --persistent -z 86400)
        # (-C counts per producer: N/1000 each.)
        bench "9-backlog-1000q-publish" publish_rate,rss "$b" "${M[@]}" -x 1000 -y 0 -c 100 -C "$((N / 1000))" --keep-queues
        bench "9-backlog-1000q-drain" deliver_rate,rss "$b" "${M[@]}" -x 0 -y 1000 --no-reset -D "$N"
        fi
        # 10. a transient backlog (non-durable queue, delivery_mode 1).
        if wants memtransient || [ "$ONLY" = none ]; then
        fresh "$b"
        M=(--queues 1 --queue-pattern antre-bench-transient -s 1024 -z 86400)
        bench "10-transient-publish" publish_rate,rss "$b" "${M[@]}" -x 1 -y 0 -c 1000 -C "$N" --keep-queues
        bench "10-transient-drain" deliver_rate,rss "$b" "${M[@]}" -x 0 -y 1 --no-reset -D "$N"
        fi
    done
fi

echo
echo "antre vs RabbitMQ, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
echo "durations ${DURATION}s per scenario; client $CLIENT; reports in $OUT"
echo
"$BENCH" compare "$OUT"
