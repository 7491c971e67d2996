#!/usr/bin/env bash
# The long crash test: kill -9 the real broker hundreds of times while a
# client publishes persistent messages with confirms, and check after every
# restart that no confirmed message was lost or corrupted.
#
#   scripts/crash-test.sh [CYCLES] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export ANTRE_CRASH_CYCLES="${1:-300}"
if [ -n "${2:-}" ]; then export ANTRE_CRASH_SEED="$2"; fi
cargo test --release -p antre --test node crash:: -- --nocapture
