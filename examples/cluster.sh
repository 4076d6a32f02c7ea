#!/usr/bin/env bash
# A whole cluster on one machine: nats-server with JetStream, the simulator,
# three workers and two cores (a leader and a standby), against one
# simulated run. Exits with the simulator's verdict (0: every count exact).
#
#   examples/cluster.sh [SWITCHBOARD_BINARY]     # default: cargo build --release's
#   TEAMS=300 MESSAGES=200 CHAOS=1 examples/cluster.sh
#
# Logs and the NATS store go to a temporary directory, printed at the start
# and kept when the run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
TEAMS=${TEAMS:-300}
MESSAGES=${MESSAGES:-200}
CHAOS=${CHAOS:-1}
if [ $# -ge 1 ]; then
    BIN=$1
else
    cargo build --release --quiet
    TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    BIN=$TARGET_DIR/release/switchboard
fi
command -v nats-server >/dev/null || { echo "needs nats-server (apt-get install nats-server)" >&2; exit 2; }

DIR=$(mktemp -d)
echo "logs in $DIR" >&2
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# Waits (up to 20 s) for a line matching $2 in file $1; prints the match.
wait_for() {
    for _ in $(seq 200); do
        if grep -m1 -o "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1" >&2
    return 1
}

nats-server -js -a 127.0.0.1 -p -1 -sd "$DIR/js" 2>"$DIR/nats.log" &
pids+=($!)
NATS=nats://127.0.0.1:$(wait_for "$DIR/nats.log" 'client connections on [0-9.]*:[0-9]*' | sed 's/.*://')

"$BIN" sim --listen 127.0.0.1:0 --teams "$TEAMS" --messages "$MESSAGES" --chaos "$CHAOS" \
    >"$DIR/sim.out" 2>"$DIR/sim.log" &
sim=$!
pids+=($sim)
GLOBAL=$(wait_for "$DIR/sim.out" 'ws://[^ ]*')

export RUST_LOG=${RUST_LOG:-info,async_nats=warn}
for name in a b c; do
    "$BIN" worker --cluster "$NATS" --name "$name" 2>"$DIR/worker-$name.log" &
    pids+=($!)
done
for core in 1 2; do
    "$BIN" connect "$GLOBAL" --cluster "$NATS" --state "$DIR/state.redb" --status-interval 5s \
        --report none 2>"$DIR/core-$core.log" &
    pids+=($!)
    wait_for "$DIR/core-$core.log" 'leading\|standby' >/dev/null
done
echo "nats $NATS, global $GLOBAL, workers a b c, cores 1 (leader) and 2 (standby)" >&2

status=0
wait "$sim" || status=$?
cat "$DIR/sim.out"
if [ "$status" -eq 0 ]; then rm -rf "$DIR"; else echo "logs kept in $DIR" >&2; fi
exit "$status"
