# Sourced by the cluster benchmarks: a 3-node RabbitMQ cluster on
# loopback (Debian's rabbitmq-server, run as the rabbitmq user, no
# systemd), and its stop.
#
#   start_rabbit_cluster OUT PREFIX BASE
#   stop_rabbit_cluster PREFIX
#
# Node i (1-3) is PREFIXi@localhost, AMQP on 127.0.0.1:BASE+i,
# distribution on 20000+BASE+i, its data in ${BENCH_TMP:-/tmp}/PREFIXi-mnesia. Enabled
# plugins are RABBIT_PLUGINS (an Erlang list, default none); a function
# rabbit_node_conf, if defined, prints extra rabbitmq.conf lines for node
# i. Appends the nodes' pids to RABBIT_PIDS.

start_rabbit_cluster() {
    local out=$1 prefix=$2 base=$3 i
    rm -rf "${BENCH_TMP:-/tmp}/${prefix}"[123]-mnesia
    for i in 1 2 3; do
        echo "loopback_users = none" >"$out/$prefix$i.conf"
        if declare -F rabbit_node_conf >/dev/null; then
            rabbit_node_conf "$i" >>"$out/$prefix$i.conf"
        fi
        echo "${RABBIT_PLUGINS:-[]}." >"$out/$prefix$i-plugins"
        chmod 644 "$out/$prefix$i.conf" "$out/$prefix$i-plugins"
        (cd /var/lib/rabbitmq && ulimit -n 20000 && setpriv --reuid rabbitmq --regid rabbitmq --init-groups \
            env HOME=/var/lib/rabbitmq RABBITMQ_CONFIG_FILE="$out/$prefix$i.conf" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$out/$prefix$i-plugins" RABBITMQ_NODE_PORT=$((base + i)) \
            RABBITMQ_NODENAME="$prefix$i@localhost" RABBITMQ_DIST_PORT=$((20000 + base + i)) \
            RABBITMQ_MNESIA_BASE="${BENCH_TMP:-/tmp}/$prefix$i-mnesia" RABBITMQ_LOG_BASE="${BENCH_TMP:-/tmp}/$prefix$i-log" \
            /usr/lib/rabbitmq/bin/rabbitmq-server -detached)
    done
    for i in 1 2 3; do
        # await_startup fails at once while the node is not registered yet.
        for _ in $(seq 60); do
            rabbitmqctl -q -n "$prefix$i@localhost" await_startup --timeout 60 >/dev/null 2>&1 && break
            sleep 1
        done
    done
    for i in 2 3; do
        rabbitmqctl -q -n "$prefix$i@localhost" stop_app
        rabbitmqctl -q -n "$prefix$i@localhost" join_cluster "${prefix}1@localhost"
        rabbitmqctl -q -n "$prefix$i@localhost" start_app
    done
    for i in 1 2 3; do
        RABBIT_PIDS+=("$(rabbitmqctl -q -n "$prefix$i@localhost" eval 'list_to_integer(os:getpid()).')")
    done
}

stop_rabbit_cluster() {
    local prefix=$1 i p
    for i in 1 2 3; do
        rabbitmqctl -q -n "$prefix$i@localhost" stop >/dev/null 2>&1 || true
    done
    # A node that never answered its CLI would keep running (and hold the
    # benchmark lock, whose descriptor it inherited).
    for p in "${RABBIT_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    # Gone, and their writes on disk, before the next run starts: a node
    # still shutting down (or the kernel writing its files back) would
    # take CPU and disk from the run that follows.
    for _ in $(seq 300); do
        local alive=0
        for p in "${RABBIT_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    rm -rf "${BENCH_TMP:-/tmp}/${prefix}"[123]-mnesia
    sync
}
