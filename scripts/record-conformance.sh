#!/usr/bin/env bash
# Re-records every conformance transcript against a live RabbitMQ.
#
# Starts a private RabbitMQ node on side ports (AMQP 5701, distribution
# 25701) with fresh data and log directories under /tmp and no plugins,
# plays every scenario of crates/antre/tests/conformance/scenarios/ against
# it, writes crates/antre/tests/conformance/transcripts/, and stops the node.
# An existing broker on 5672 is left alone.
#
# Usage: scripts/record-conformance.sh [--port P] [--keep-data]
# Needs Debian's rabbitmq-server (the transcripts in the repository were
# recorded against 3.10.8).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT=5701
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --port) PORT=$2; shift 2 ;;
        --keep-data) KEEP=1; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

command -v rabbitmq-server >/dev/null || {
    echo "rabbitmq-server not found (apt-get install rabbitmq-server)" >&2
    exit 1
}

NODE="conformance-$PORT@localhost"
BASE="/tmp/antre-conformance-$PORT"
rm -rf "$BASE"
mkdir -p "$BASE/mnesia" "$BASE/log"
echo "[]." > "$BASE/enabled_plugins"
# Debian's rabbitmq-server drops root for the rabbitmq user, which must own
# the node's directories.
if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq: "$BASE"
fi

export RABBITMQ_NODENAME="$NODE"
export RABBITMQ_NODE_PORT="$PORT"
export RABBITMQ_DIST_PORT=$((PORT + 20000))
export RABBITMQ_MNESIA_BASE="$BASE/mnesia"
export RABBITMQ_LOG_BASE="$BASE/log"
export RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins"

stop() {
    rabbitmqctl -n "$NODE" stop >/dev/null 2>&1 || true
    if [ "$KEEP" = 0 ]; then rm -rf "$BASE"; fi
}
trap stop EXIT

echo "== starting RabbitMQ ($NODE, AMQP port $PORT)"
rabbitmq-server -detached
# Right after -detached the node may not be registered with epmd yet, and
# await_startup then fails at once instead of waiting: ping first.
for _ in $(seq 1 240); do
    rabbitmqctl -n "$NODE" ping >/dev/null 2>&1 && break
    sleep 0.5
done
rabbitmqctl -n "$NODE" await_startup --timeout 120 >/dev/null
rabbitmqctl -n "$NODE" version

echo "== recording"
cd "$ROOT"
# One scenario group at a time: the groups share the one node.
ANTRE_CONFORMANCE_RECORD="127.0.0.1:$PORT" \
    cargo test -p antre --test node conformance:: -- --test-threads=1
git -C "$ROOT" status --short crates/antre/tests/conformance/transcripts
