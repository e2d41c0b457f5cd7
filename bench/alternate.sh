#!/usr/bin/env bash
# Drains at concurrency C alternated on one throwaway Redis, ROUNDS times: ChasquiMQ without
# events (the peers' build), jobs at the default, jobs with FETCH_AHEAD=64. Each drain takes
# a fresh fill of N jobs. Alternating puts the systems in the same minutes, so a noisy
# minute costs all three: read the per-round ratios, not one run.
# Usage: bench/alternate.sh   (env: PEERS=../shared/peers ROUNDS=6 PORT=6396 N=100000 C=50)
# Needs the peers built first: (cd $PEERS && SYSTEMS=chasquimq rust/run.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="$(cd "${PEERS:-../shared/peers}" && pwd)"
ROUNDS="${ROUNDS:-6}"; PORT="${PORT:-6396}"; N="${N:-100000}"; C="${C:-50}"
CHASQUI="${PEERS_TARGET:-/tmp/bench-peers-target}/release/chasquimq_bench"
[ -x "$CHASQUI" ] || { echo "no $CHASQUI: build the peers first (see above)" >&2; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/bench-target}"
cargo build --release --quiet -p jobs-bench
B="$CARGO_TARGET_DIR/release/jobs-bench"
export PORT
"$PEERS/start-redis.sh" "$PORT" >/dev/null
trap '"$PEERS/stop-redis.sh" "$PORT" >/dev/null' EXIT
rate() { sed -n 's/^RESULT //p' | python3 -c "import json,sys; print(json.loads(sys.stdin.readline())['jobs_per_s'])"; }
fresh() { redis-cli -p "$PORT" flushall >/dev/null; "$1" enqueue bulk "$N" >/dev/null; }
echo "round  chasquimq-events-off  jobs  (ratio)  jobs-fetch_ahead-64  (ratio)"
for round in $(seq 1 "$ROUNDS"); do
  fresh "$CHASQUI"; c=$(CHASQUI_EVENTS=0 "$CHASQUI" drain "$C" 2>/dev/null | rate)
  fresh "$B"; j=$("$B" drain "$C" | rate)
  fresh "$B"; a=$(FETCH_AHEAD=64 "$B" drain "$C" | rate)
  python3 -c "print('%5d  %20.0f  %6.0f  (%.2fx)  %19.0f  (%.2fx)' % ($round, $c, $j, $j / $c, $a, $a / $c))"
done
