#!/usr/bin/env bash
# Streams side by side: RabbitMQ (3.10, stream plugin) and antre, on this
# machine, alternating. For each protocol (AMQP 0-9-1 on an x-queue-type
# stream queue, and RabbitMQ's stream protocol) and each consumer count:
# publish N messages to a fresh stream with confirms, then C consumers each
# read the whole stream from `first` at once. Prints one table with rates,
# broker CPU per message (from /proc) and antre/RabbitMQ ratios.
#
# Usage: scripts/bench-streams.sh [options]
#   --messages N      messages per run (default 1000000)
#   --size B          body size in bytes (default 16)
#   --consumers LIST  consumer counts, comma-separated (default 1,5)
#   --protocols LIST  amqp, stream (rabbitmq-stream-client publishes and
#                     consumes) and stream-lean (antre-bench's own lean
#                     stream-protocol client does); default all three
#   --no-rabbitmq     measure antre only
#   --no-antre        measure RabbitMQ only
#   --antre-bin PATH  use this antre binary instead of building one
#   --stream-threads N  runtime threads of the stream-protocol client
#                     (default 2: rabbitmq-stream-client runs its reader and
#                     confirm callbacks as tasks, which a single thread
#                     starves; the AMQP client runs on one thread)
#   --out DIR         where the JSON reports and logs go
#                     (default target/bench-streams-<date>)
#   --pin             each broker on CPU 0 and the client on CPU 1 (taskset):
#                     on a 2-core machine the client otherwise competes with
#                     the broker it measures. Both brokers size themselves
#                     to the one CPU they see (Erlang starts one scheduler,
#                     tokio one worker).
#
# RabbitMQ runs as its own node (RABBIT_NODE, default
# bench-streams@localhost) on side ports: AMQP RABBIT_PORT (default 5694),
# stream RABBIT_STREAM_PORT (5554), distribution RABBIT_PORT+20000, with its
# data under a temporary directory; antre on 127.0.0.1:5695 (AMQP) and
# 127.0.0.1:5555 (stream). Both are stopped at the end. The stream plugin
# advertises 127.0.0.1 so that clients reconnect where they connected.
#
# The stream-protocol client is rabbitmq-stream-client 0.4.4 for both
# brokers: newer releases send exchange_command_versions (RabbitMQ 3.11)
# while connecting, which 3.10 answers by closing the connection.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MESSAGES=1000000
SIZE=16
CONSUMERS=1,5
PROTOCOLS=amqp,stream,stream-lean
WITH_ANTRE=1
WITH_RABBIT=1
ANTRE_BIN=""
STREAM_THREADS=2
OUT=""
BROKER_CPU=()
CLIENT_CPU=()
while [ $# -gt 0 ]; do
    case "$1" in
        --messages) MESSAGES=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --consumers) CONSUMERS=$2; shift 2 ;;
        --protocols) PROTOCOLS=$2; shift 2 ;;
        --no-antre) WITH_ANTRE=0; shift ;;
        --no-rabbitmq) WITH_RABBIT=0; shift ;;
        --antre-bin) ANTRE_BIN=$2; shift 2 ;;
        --stream-threads) STREAM_THREADS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --pin) BROKER_CPU=(taskset -c 0); CLIENT_CPU=(taskset -c 1); shift ;;
        -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$CARGO_TARGET_DIR/bench-streams-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
BENCH=$CARGO_TARGET_DIR/release/antre-bench
ANTRE=${ANTRE_BIN:-$CARGO_TARGET_DIR/release/antre}
RABBIT_NODE=${RABBIT_NODE:-bench-streams@localhost}
RABBIT_PORT=${RABBIT_PORT:-5694}
RABBIT_STREAM_PORT=${RABBIT_STREAM_PORT:-5554}
ANTRE_AMQP=127.0.0.1:5695
ANTRE_STREAM=127.0.0.1:5555

log() { echo "== $*" >&2; }

# One build of both: built apart, the two would unify features differently
# and rebuild each other's dependencies.
if [ $WITH_ANTRE = 1 ] && [ -z "$ANTRE_BIN" ]; then
    log "building antre and antre-bench (release)"
    (cd "$ROOT" && cargo build --release -p antre -p antre-bench)
else
    log "building antre-bench (release)"
    (cd "$ROOT" && cargo build --release -p antre-bench)
fi

# ---- RabbitMQ ------------------------------------------------------------
RABBIT_DIR=""
RABBIT_PID=""
rabbitctl() { rabbitmqctl -n "$RABBIT_NODE" "$@"; }
start_rabbit() {
    RABBIT_DIR=$(mktemp -d /tmp/bench-streams-rabbit.XXXXXX)
    chmod 755 "$RABBIT_DIR"
    cat >"$RABBIT_DIR/rabbitmq.conf" <<EOF
loopback_users = none
stream.listeners.tcp.1 = $RABBIT_STREAM_PORT
stream.advertised_host = 127.0.0.1
stream.advertised_port = $RABBIT_STREAM_PORT
EOF
    echo '[rabbitmq_stream].' >"$RABBIT_DIR/plugins"
    local env=(HOME=/var/lib/rabbitmq RABBITMQ_CONFIG_FILE="$RABBIT_DIR/rabbitmq.conf"
        RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/plugins" RABBITMQ_NODE_PORT=$RABBIT_PORT
        RABBITMQ_NODENAME=$RABBIT_NODE RABBITMQ_DIST_PORT=$((RABBIT_PORT + 20000))
        RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia" RABBITMQ_LOG_BASE="$RABBIT_DIR/log")
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
        chown rabbitmq: "$RABBIT_DIR"
        # Debian's wrapper would reset the fd limit to 1024: run the server
        # script itself as the rabbitmq user.
        (cd /var/lib/rabbitmq && ulimit -n 20000 && ${BROKER_CPU[@]+"${BROKER_CPU[@]}"} \
            setpriv --reuid rabbitmq --regid rabbitmq \
            --init-groups env "${env[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server -detached)
    else
        ${BROKER_CPU[@]+"${BROKER_CPU[@]}"} env "${env[@]}" rabbitmq-server -detached
    fi
    for _ in $(seq 1 240); do
        rabbitctl ping >/dev/null 2>&1 && break
        sleep 0.5
    done
    rabbitctl await_startup --timeout 120 >/dev/null
    RABBIT_PID=$(rabbitctl eval 'os:getpid().' 2>/dev/null | tr -dc '0-9')
    log "RabbitMQ $(rabbitctl version 2>/dev/null) pid $RABBIT_PID"
}
stop_rabbit() {
    if [ -n "$RABBIT_DIR" ]; then
        rabbitctl stop >/dev/null 2>&1 || true
        rm -rf "$RABBIT_DIR"
        RABBIT_DIR=""
    fi
}

# ---- antre ---------------------------------------------------------------
ANTRE_PID=""
ANTRE_DATA=""
start_antre() {
    ANTRE_DATA=$(mktemp -d /tmp/bench-streams-antre.XXXXXX)
    ${BROKER_CPU[@]+"${BROKER_CPU[@]}"} "$ANTRE" serve --amqp-listen "$ANTRE_AMQP" --stream-listen "$ANTRE_STREAM" \
        --http-listen off --data-dir "$ANTRE_DATA" >>"$OUT/antre.log" 2>&1 &
    ANTRE_PID=$!
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/${ANTRE_STREAM%:*}/${ANTRE_STREAM#*:}") 2>/dev/null \
            && (exec 3<>"/dev/tcp/${ANTRE_AMQP%:*}/${ANTRE_AMQP#*:}") 2>/dev/null; then
            log "antre pid $ANTRE_PID"
            return 0
        fi
        kill -0 "$ANTRE_PID" 2>/dev/null || { tail -20 "$OUT/antre.log" >&2; return 1; }
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
    [ -n "$ANTRE_DATA" ] && rm -rf "$ANTRE_DATA"
    ANTRE_DATA=""
}

trap 'stop_antre; stop_rabbit' EXIT
[ $WITH_RABBIT = 1 ] && start_rabbit
[ $WITH_ANTRE = 1 ] && start_antre

# ---- runs ----------------------------------------------------------------
BROKERS=()
[ $WITH_RABBIT = 1 ] && BROKERS+=(rabbitmq)
[ $WITH_ANTRE = 1 ] && BROKERS+=(antre)
for protocol in ${PROTOCOLS//,/ }; do
    for c in ${CONSUMERS//,/ }; do
        for b in "${BROKERS[@]}"; do
            if [ "$b" = rabbitmq ]; then
                pid=$RABBIT_PID; amqp=127.0.0.1:$RABBIT_PORT; sport=$RABBIT_STREAM_PORT
            else
                pid=$ANTRE_PID; amqp=$ANTRE_AMQP; sport=${ANTRE_STREAM#*:}
            fi
            threads=$STREAM_THREADS proto=stream client=crate
            case "$protocol" in
                amqp) threads=1 proto=amqp ;;
                stream-lean) client=lean ;;
            esac
            log "$b $protocol: $MESSAGES messages, $c consumers"
            ${CLIENT_CPU[@]+"${CLIENT_CPU[@]}"} "$BENCH" --threads "$threads" stream --protocol "$proto" --client "$client" \
                --uri "amqp://guest:guest@$amqp/%2f" \
                --host 127.0.0.1 --port "$sport" -n "$MESSAGES" -s "$SIZE" -c "$c" \
                --pid "$pid" --broker "$b" --json "$OUT/$protocol-c$c-$b.json" \
                | tail -1 >&2
        done
    done
done

# ---- table ---------------------------------------------------------------
echo
echo "| protocol | consumers | broker | publish msg/s | consume msg/s | CPU µs/msg publish | CPU µs/msg consume |"
echo "|---|---:|---|---:|---:|---:|---:|"
for protocol in ${PROTOCOLS//,/ }; do
    for c in ${CONSUMERS//,/ }; do
        for b in "${BROKERS[@]}"; do
            jq -r --arg b "$b" --arg p "$protocol" '"| \($p) | \(.consumers) | \($b) | \(.publish_rate | floor) | \(.consume_rate | floor) | \(.publish_cpu_us_per_msg // 0 | . * 100 | round / 100) | \(.consume_cpu_us_per_msg // 0 | . * 100 | round / 100) |"' \
                "$OUT/$protocol-c$c-$b.json"
        done
        r=$OUT/$protocol-c$c-rabbitmq.json a=$OUT/$protocol-c$c-antre.json
        if [ -f "$r" ] && [ -f "$a" ]; then
            jq -rn --arg p "$protocol" --slurpfile r "$r" --slurpfile a "$a" '
                def ratio(x; y): if y > 0 then (x / y * 100 | round / 100 | tostring) + "×" else "—" end;
                "| \($p) | \($a[0].consumers) | **antre / RabbitMQ** | \(ratio($a[0].publish_rate; $r[0].publish_rate)) | \(ratio($a[0].consume_rate; $r[0].consume_rate)) | \(ratio($a[0].publish_cpu_us_per_msg // 0; $r[0].publish_cpu_us_per_msg // 0)) | \(ratio($a[0].consume_cpu_us_per_msg // 0; $r[0].consume_cpu_us_per_msg // 0)) |"'
        fi
    done
done
log "reports in $OUT"
