#!/usr/bin/env bash
# Fault tests of `mnv2 serve` on loopback, each bounded by `timeout`:
#   1. kill -9 under load (wrk, 16 connections), then a restart on the same port serves again
#      (correct answers, a short load run with zero errors). The server keeps no state: it
#      writes no file (checked: its working directory stays empty), so a kill loses only the
#      requests it was answering, and a restart is a fresh start.
#   2. SIGTERM drains: requests in flight when SIGTERM arrives (8 clients, 24 images each, all
#      admitted) are all answered in full with 200, new connections are refused afterwards, and the server
#      exits 0.
# About 20 s (after installing wrk with apt once, if missing).
#
# Env: MNV2 (the binary; default: built with cargo --release), SERVE_FAULTS_OUT (logs; default
# $CARGO_TARGET_DIR/serve-faults), SERVE_FAULTS_PORT (default 18090).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${SERVE_FAULTS_OUT:-$TARGET/serve-faults}
PORT=${SERVE_FAULTS_PORT:-18090}
WEIGHTS=$ROOT/weights/mobilenet_v2-b0353104.pth
PHOTO=$ROOT/tests/data/images/chelsea.png
URL=http://127.0.0.1:$PORT
mkdir -p "$OUT"
step() { echo "== serve_faults: $*"; }
fail() { echo "serve_faults: FAIL: $*"; exit 1; }

[ -f "$WEIGHTS" ] || bash scripts/fetch_assets.sh
if [ -z "${MNV2:-}" ]; then
  step "building mnv2 (release)"
  timeout 1800 cargo build --release -q -p mnv2
  MNV2=$TARGET/release/mnv2
fi
MNV2=$(realpath "$MNV2")
source scripts/lib/wrk.sh
ensure_wrk
wrk_post_lua "$OUT/post.lua" "$PHOTO"

# The server runs in an empty directory of its own: anything it wrote would show there.
RUNDIR=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$RUNDIR"; }
trap cleanup EXIT

start() {  # LOG
  (cd "$RUNDIR" && exec "$MNV2" serve --weights "$WEIGHTS" --addr "127.0.0.1:$PORT" --threads 2) >"$1" 2>&1 &
  PID=$!
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null "$URL/v2/health/ready" && return 0
    kill -0 $PID 2>/dev/null || { cat "$1"; fail "the server exited at start"; }
    sleep 0.1
  done
  cat "$1"; fail "the server did not get ready within 30 s"
}

classify_ok() {
  curl -sf --max-time 30 --data-binary @"$PHOTO" -H 'Content-Type: image/png' "$URL/v1/classify?top=1" | grep -q '"Egyptian cat"'
}

# --- 1. kill -9 under load, restart ---
step "kill -9 under load"
start "$OUT/server1.log"
classify_ok || fail "the first server does not classify chelsea.png"
timeout 60 wrk -t 2 -c 16 -d 6s --timeout 10s -s "$OUT/post.lua" "$URL/v1/classify" >"$OUT/wrk-kill.txt" 2>&1 &
WRK=$!
sleep 3
inflight=$(curl -s "$URL/metrics" | sed -n 's/^mnv2_inflight_requests \([0-9]*\)$/\1/p')
kill -9 $PID
wait $PID 2>/dev/null || true
PID=""
wait $WRK || true
step "killed with $inflight requests in flight; wrk: $(grep RESULT "$OUT/wrk-kill.txt" || echo 'no result')"
[ -z "$(ls -A "$RUNDIR")" ] || fail "the server wrote files: $(ls -A "$RUNDIR")"
curl -s -o /dev/null --max-time 2 "$URL/v2/health/live" && fail "something still answers on port $PORT after kill -9"

step "restart on the same port"
t0=$(date +%s%N)
start "$OUT/server2.log"
step "ready again in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
classify_ok || fail "the restarted server does not classify chelsea.png"
line=$(timeout 60 wrk -t 2 -c 8 -d 4s --timeout 10s -s "$OUT/post.lua" "$URL/v1/classify" | grep '^RESULT')
read -r _ n _ status sock _ <<<"$line"
[ "$n" -gt 0 ] && [ "$status" = 0 ] && [ "$sock" = 0 ] || fail "after restart: $n requests, $status non-2xx, $sock socket errors"
step "after restart: $n requests, 0 errors"

# --- 2. SIGTERM drains the requests in flight ---
step "SIGTERM with requests in flight"
ARGS=()
for _ in $(seq 1 24); do ARGS+=(-F "image=@$PHOTO"); done
CURLS=()
rm -f "$OUT"/drain-*
for i in $(seq 1 8); do
  curl -sS --max-time 120 -o "$OUT/drain-$i.json" -w "%{http_code}" "${ARGS[@]}" "$URL/v1/classify?top=1" >"$OUT/drain-$i.code" 2>"$OUT/drain-$i.err" &
  CURLS+=($!)
done
for _ in $(seq 1 500); do
  inflight=$(curl -s "$URL/metrics" | sed -n 's/^mnv2_inflight_requests \([0-9]*\)$/\1/p')
  [ "${inflight:-0}" -ge 8 ] && break
  sleep 0.01
done
# All 8 admitted (a connection whose request has not arrived yet is not in flight: it is
# closed, as with any server that stops).
[ "${inflight:-0}" -ge 8 ] || fail "only ${inflight:-0} of 8 requests were in flight to drain"
kill -TERM $PID
step "SIGTERM sent with $inflight requests in flight"
for c in "${CURLS[@]}"; do wait "$c" || true; done
rc=0
timeout 60 tail --pid=$PID -f /dev/null || fail "the server did not exit within 60 s of SIGTERM"
wait $PID || rc=$?
PID=""
[ $rc = 0 ] || fail "the server exited with $rc after SIGTERM"
for i in $(seq 1 8); do
  code=$(cat "$OUT/drain-$i.code")
  [ "$code" = 200 ] || fail "in-flight request $i got HTTP $code: $(cat "$OUT/drain-$i.err") $(head -c 300 "$OUT/drain-$i.json")"
  n=$(grep -o '"Egyptian cat"' "$OUT/drain-$i.json" | wc -l)
  [ "$n" = 24 ] || fail "in-flight request $i has $n of 24 answers"
done
curl -s -o /dev/null --max-time 2 "$URL/v2/health/live" && fail "still answering after SIGTERM"
grep -q "shutting down" "$OUT/server2.log" || fail "no shutdown line in the log"
[ -z "$(ls -A "$RUNDIR")" ] || fail "the server wrote files: $(ls -A "$RUNDIR")"
step "PASS (8 requests in flight at SIGTERM all answered in full; exit 0; logs in $OUT)"
