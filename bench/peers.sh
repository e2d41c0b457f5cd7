#!/usr/bin/env bash
# Runs jobs-bench with the peers' protocol, exactly as ../shared/peers/rust/run.sh runs
# each peer (enqueue bulk, drain, enqueue single, enqueue single-seq, latency; REPS reps)
# plus, like its ChasquiMQ events-off run, a second drain with FETCH_AHEAD=64 (opt-in)
# on the peers' throwaway Redis, and writes $RESULTS_DIR/jobs.jsonl so that
# `python3 report.py` in ../shared/peers adds `jobs` as a row beside the peers.
# Usage: bench/peers.sh   (env: PEERS=../shared/peers PORT=6395 N=100000 REPS=3 C=50
#                               LAT_N=2000 LAT_RATE=500 RESULTS_DIR=$PEERS/results)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="$(cd "${PEERS:-../shared/peers}" && pwd)"
source "$PEERS/lib.sh" # RESULTS_DIR
PORT="${PORT:-6395}"; N="${N:-100000}"; REPS="${REPS:-3}"; C="${C:-50}"
LAT_N="${LAT_N:-2000}"; LAT_RATE="${LAT_RATE:-500}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/bench-target}"
cargo build --release --quiet -p jobs-bench
B="$CARGO_TARGET_DIR/release/jobs-bench"
OUT="$RESULTS_DIR/jobs.jsonl"
export PORT
"$PEERS/start-redis.sh" "$PORT" >/dev/null
trap '"$PEERS/stop-redis.sh" "$PORT" >/dev/null' EXIT
flush() { redis-cli -p "$PORT" flushall >/dev/null; }
rec() { # rep cmd...
  local rep=$1; shift
  "$@" | sed -n 's/^RESULT //p' | python3 -c "import json,sys
for l in sys.stdin: d=json.loads(l); d['rep']=$rep; print(json.dumps(d))" | tee -a "$OUT"
}
: > "$OUT"
for rep in $(seq 1 "$REPS"); do
  flush; rec "$rep" "$B" enqueue bulk "$N"
  rec "$rep" "$B" drain "$C"
  flush; "$B" enqueue bulk "$N" >/dev/null
  FETCH_AHEAD=64 rec "$rep" "$B" drain "$C"
  flush; rec "$rep" "$B" enqueue single "$N"
  flush; rec "$rep" "$B" enqueue single-seq "$N"
  flush; rec "$rep" "$B" latency "$LAT_N" "$LAT_RATE" "$C"
done
python3 "$PEERS/summarize_jsonl.py" "$OUT"
