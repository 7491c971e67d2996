# Sourced by the benchmarks that measure brokers' CPU from /proc.
#
#   cpu_ticks PID...   total utime+stime of the given processes, in ticks
#   HZ                 ticks per second

HZ=$(getconf CLK_TCK)

cpu_ticks() {
    local total=0 p
    for p in "$@"; do
        total=$((total + $(awk '{print $14+$15}' "/proc/$p/stat")))
    done
    echo "$total"
}
