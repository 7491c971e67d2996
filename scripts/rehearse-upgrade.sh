#!/usr/bin/env bash
# A rolling upgrade from an older release of antre to this checkout, under
# load: builds antre at REV (a commit, tag or branch) in a temporary git
# worktree, starts a 3-node cluster on that binary, and upgrades it node
# after node as docs/clustering.md tells operators (`antre queues
# await-online-quorum-plus-one`, `antre cluster drain`, SIGTERM, a start
# on this checkout's build), while clients publish with confirms, consume
# with acks and declare queues through every node. Then every feature
# flag must be enabled on every node, and the history is checked as the
# nemesis checks it (0 confirmed lost, every repeat marked redelivered,
# nothing never published). Prints one line of figures:
#
#   nemesis: rolling upgrade from BIN, delivered ..., lost 0, ...
#
# It is cluster_nemesis::a_quorum_queue_keeps_one_history_through_a_rolling_upgrade_under_load
# with ANTRE_OLD_BIN set; CI runs that test without it (this build acting
# as a version without feature flags).
#
# Usage: scripts/rehearse-upgrade.sh REV
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:?usage: scripts/rehearse-upgrade.sh REV}"
commit=$(git rev-parse --verify "$rev^{commit}")
# The old release is built in a worktree (removed at the end) with a
# target directory of its own, kept so that a second rehearsal rebuilds
# only antre's crates: sharing this checkout's target directory made cargo
# take one build for the other.
src="$PWD/target/rehearse-src"
target="$PWD/target/rehearse-target"
mkdir -p target
git worktree remove --force "$src" >/dev/null 2>&1 || rm -rf "$src"
git worktree prune
git worktree add --detach "$src" "$commit" >/dev/null
trap 'git worktree remove --force "$src" >/dev/null 2>&1 || true' EXIT
echo "building antre at ${commit:0:10} (in $target)"
(cd "$src" && CARGO_TARGET_DIR="$target" cargo build -q -p antre --bin antre)
old="$target/antre-${commit:0:10}"
cp "$target/debug/antre" "$old"
log=target/rehearse-upgrade.log
echo "full output: $log"
ANTRE_OLD_BIN="$old" cargo test -p antre --test cluster \
    cluster_nemesis::a_quorum_queue_keeps_one_history_through_a_rolling_upgrade_under_load \
    -- --nocapture > "$log" 2>&1 && status=0 || status=$?
grep -E '^nemesis' "$log" || true
grep -E '^test result' "$log" || true
exit $status
