#!/usr/bin/env bash
# Forwarding benchmark: publish+consume (confirms on) on the owner n1 vs
# through the non-owner n2, 3 release nodes on loopback.
set -u
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
D=/tmp/fwd-bench; rm -rf $D; mkdir -p $D
export ANTRE_CLUSTER_SECRET=bench-cluster-secret-0123456789
PEERS=n1=127.0.0.1:25721,n2=127.0.0.1:25722,n3=127.0.0.1:25723
for i in 1 2 3; do
  RUST_LOG=warn $BIN/antre serve --node-name n$i --cluster-listen 127.0.0.1:2572$i --cluster-peers $PEERS \
    --amqp-listen 127.0.0.1:2570$i --http-listen 127.0.0.1:2571$i --data-dir $D/n$i > $D/n$i.log 2>&1 &
  echo $! > $D/n$i.pid
done
for t in $(seq 1 100); do
  n=$(curl -s -u guest:guest http://127.0.0.1:25712/api/nodes | grep -o '"metadata_leader":true' | wc -l)
  [ "$n" = 1 ] && break; sleep 0.2
done
run() { # label url size extra...
  local label=$1 url=$2 size=$3; shift 3
  $BIN/antre-bench run -u $url -x 1 -y 1 -s $size -c 1000 -q 1000 -z 10 --queue-pattern fwd$size-%d --broker antre --label $label "$@" 2>&1 | tail -n 12
}
for size in 16 1024; do
  # First run on n1 declares the queue there: n1 owns it.
  run owner-warmup amqp://guest:guest@127.0.0.1:25701/%2f $size -z 3 --keep-queues > /dev/null
  for rep in 1 2; do
    echo "== size $size rep $rep: on the owner (n1)"
    run owner amqp://guest:guest@127.0.0.1:25701/%2f $size --no-reset --keep-queues
    echo "== size $size rep $rep: through n2 (forwarded)"
    run forwarded amqp://guest:guest@127.0.0.1:25702/%2f $size --no-reset --keep-queues
  done
done
curl -s -u guest:guest http://127.0.0.1:25711/api/queues | grep -o '"name":"fwd[^"]*","node":"[^"]*"' | head
for i in 1 2 3; do kill $(cat $D/n$i.pid); done
sleep 1; rm -rf $D
