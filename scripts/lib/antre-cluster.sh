# Sourced by the cluster benchmarks: starts three release antre nodes on
# loopback and waits until the cluster takes changes, and stops them.
#
#   start_antre_cluster ANTRE OUT BASE SECRET
#   stop_antre_cluster
#
# Node i (1-3) listens on 127.0.0.1: cluster 25000+BASE+i, AMQP
# 5000+BASE+i, HTTP 15000+BASE+i, stream 5020+BASE+i; its data is in
# OUT/antre-ni, its log OUT/antre-ni.log. Appends the nodes' pids to
# ANTRE_PIDS. Returns once node 1 has declared the queue "warm-up" (the
# metadata group has a leader). ANTRE_ARGS, if set, is added to each
# node's command line (split on spaces).

start_antre_cluster() {
    local antre=$1 out=$2 base=$3 secret=$4 i
    local peers=n1=127.0.0.1:$((25001 + base)),n2=127.0.0.1:$((25002 + base)),n3=127.0.0.1:$((25003 + base))
    for i in 1 2 3; do
        ANTRE_CLUSTER_SECRET=$secret "$antre" serve --node-name "n$i" \
            --cluster-listen "127.0.0.1:$((25000 + base + i))" --cluster-peers "$peers" \
            --amqp-listen "127.0.0.1:$((5000 + base + i))" --http-listen "127.0.0.1:$((15000 + base + i))" \
            --stream-listen "127.0.0.1:$((5020 + base + i))" \
            --data-dir "$out/antre-n$i" ${ANTRE_ARGS:-} 2>"$out/antre-n$i.log" &
        ANTRE_PIDS+=($!)
    done
    for i in 1 2 3; do
        for _ in $(seq 100); do
            curl -sf -u guest:guest "http://127.0.0.1:$((15000 + base + i))/api/overview" >/dev/null && break
            sleep 0.1
        done
    done
    for _ in $(seq 100); do
        curl -sf -u guest:guest -X PUT -H 'content-type: application/json' \
            -d '{"durable":true}' "http://127.0.0.1:$((15001 + base))/api/queues/%2F/warm-up" >/dev/null && return 0
        sleep 0.2
    done
    echo "the cluster took no change within 20 s (logs in $out)" >&2
    return 1
}

# Stops the nodes start_antre_cluster started (ANTRE_PIDS).
stop_antre_cluster() {
    for p in "${ANTRE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
