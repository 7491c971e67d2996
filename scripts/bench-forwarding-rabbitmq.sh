#!/usr/bin/env bash
# The same pair of runs against a 2-node RabbitMQ 3.10 cluster: a classic
# queue on fwda, the client on fwda (owner) or fwdb (forwarded by Erlang
# distribution).
set -u
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
R=/tmp/fwd-rabbit; rm -rf $R; mkdir -p $R; chmod 777 $R
echo 'loopback_users = none' > $R/r.conf; echo '[].' > $R/plugins; chmod 644 $R/r.conf $R/plugins
start() { # name port dport
  ( cd /var/lib/rabbitmq && ulimit -n 20000 && setpriv --reuid rabbitmq --regid rabbitmq --init-groups env HOME=/var/lib/rabbitmq \
    RABBITMQ_CONFIG_FILE=$R/r.conf RABBITMQ_ENABLED_PLUGINS_FILE=$R/plugins RABBITMQ_NODE_PORT=$2 RABBITMQ_NODENAME=$1@localhost \
    RABBITMQ_DIST_PORT=$3 RABBITMQ_MNESIA_BASE=$R/$1-mnesia RABBITMQ_LOG_BASE=$R/$1-log /usr/lib/rabbitmq/bin/rabbitmq-server -detached )
}
start fwda 25801 25811; start fwdb 25802 25812
rabbitmqctl -n fwda@localhost await_startup; rabbitmqctl -n fwdb@localhost await_startup
rabbitmqctl -n fwdb@localhost stop_app >/dev/null && rabbitmqctl -n fwdb@localhost join_cluster fwda@localhost && rabbitmqctl -n fwdb@localhost start_app >/dev/null
rabbitmqctl -n fwda@localhost cluster_status | grep -A3 "Running Nodes"
run() { local label=$1 url=$2 size=$3; shift 3
  $BIN/antre-bench run -u $url -x 1 -y 1 -s $size -c 1000 -q 1000 -z 10 --queue-pattern fwd$size-%d --broker rabbitmq --label $label "$@" 2>&1 | tail -n 12; }
for size in 16 1024; do
  run owner-warmup amqp://guest:guest@127.0.0.1:25801/%2f $size -z 3 --keep-queues > /dev/null
  for rep in 1 2; do
    echo "== rabbitmq size $size rep $rep: on the owner (fwda)"
    run owner amqp://guest:guest@127.0.0.1:25801/%2f $size --no-reset --keep-queues
    echo "== rabbitmq size $size rep $rep: through fwdb"
    run forwarded amqp://guest:guest@127.0.0.1:25802/%2f $size --no-reset --keep-queues
  done
done
rabbitmqctl -n fwdb@localhost stop; rabbitmqctl -n fwda@localhost stop
rm -rf $R
