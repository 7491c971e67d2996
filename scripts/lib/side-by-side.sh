# Sourced, from the repository's root, by the benchmarks that run a
# 3-node antre cluster beside a 3-node RabbitMQ cluster with antre-bench
# as the client (bench-quorum.sh, bench-dead-letter.sh): the cluster
# helpers, the CPU helpers, and
#
#   side_by_side_setup NAME   OUT, a new directory /tmp/NAME.XXXXXX
#                             (under $BENCH_TMP if set: /dev/shm puts
#                             every node's data on tmpfs, to see what
#                             the disk costs) with
#                             an empty OUT/rows; release builds of antre
#                             and antre-bench; ANTRE (ANTRE_BIN if set)
#                             and BENCH, their paths

. scripts/lib/antre-cluster.sh
. scripts/lib/rabbitmq-cluster.sh
. scripts/lib/cpu.sh

side_by_side_setup() {
    OUT=$(mktemp -d "${BENCH_TMP:-/tmp}/$1.XXXXXX")
    chmod 755 "$OUT"
    : >"$OUT/rows"
    cargo build --release -q -p antre -p antre-bench
    ANTRE=${ANTRE_BIN:-$PWD/target/release/antre}
    BENCH=$PWD/target/release/antre-bench
}
