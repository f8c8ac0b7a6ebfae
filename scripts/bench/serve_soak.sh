#!/usr/bin/env bash
# Soak test of `mnv2 serve` on loopback: wrk posts chelsea.png to /v1/classify for DURATION
# seconds (default 600) at CONNS connections (default 8), the server's RSS is sampled every
# INTERVAL seconds (default 10), and the RSS must stay flat: after the first WARMUP seconds
# (default 60, or a tenth of the run if shorter), the largest sample may exceed the first
# sample after warm-up by at most SLACK_MB (default 8) MB. Also asserted: zero errors, the
# server alive at the end. Writes $OUT/serve_soak.csv (t_s, rss_mb) and $OUT/serve_soak.json.
#
# Usage: scripts/bench/serve_soak.sh            (env: DURATION, CONNS, INTERVAL, WARMUP,
#        SLACK_MB, THREADS=2, MNV2=binary, SERVE_SOAK_OUT, SERVE_SOAK_PORT=18095)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
DURATION=${DURATION:-600}
CONNS=${CONNS:-8}
INTERVAL=${INTERVAL:-10}
WARMUP=${WARMUP:-$(( DURATION / 10 < 60 ? DURATION / 10 : 60 ))}
SLACK_MB=${SLACK_MB:-8}
THREADS=${THREADS:-2}
PORT=${SERVE_SOAK_PORT:-18095}
OUT=${SERVE_SOAK_OUT:-$TARGET/serve-soak}
WEIGHTS=$ROOT/weights/mobilenet_v2-b0353104.pth
PHOTO=$ROOT/tests/data/images/chelsea.png
URL=http://127.0.0.1:$PORT
mkdir -p "$OUT"
step() { echo "== serve_soak: $*" >&2; }
fail() { echo "serve_soak: FAIL: $*" >&2; exit 1; }

[ -f "$WEIGHTS" ] || bash scripts/fetch_assets.sh
if [ -z "${MNV2:-}" ]; then
  step "building mnv2 (release)"
  timeout 1800 cargo build --release -q -p mnv2
  MNV2=$TARGET/release/mnv2
fi
source scripts/lib/wrk.sh
command -v wrk >/dev/null || fail "wrk is not installed (apt-get install wrk)"
wrk_post_lua "$OUT/post.lua" "$PHOTO"

"$MNV2" serve --weights "$WEIGHTS" --addr "127.0.0.1:$PORT" --threads "$THREADS" >"$OUT/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -sf -o /dev/null "$URL/v2/health/ready" && break
  kill -0 $PID 2>/dev/null || { cat "$OUT/server.log"; fail "the server exited at start"; }
  sleep 0.1
done
rss() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$PID/status"; }

step "${DURATION}s at $CONNS connections, RSS every ${INTERVAL}s, flat after ${WARMUP}s within ${SLACK_MB} MB"
timeout $((DURATION + 120)) wrk -t 2 -c "$CONNS" -d "${DURATION}s" --timeout 30s -s "$OUT/post.lua" "$URL/v1/classify" \
  >"$OUT/wrk.txt" 2>&1 &
WRK=$!
echo "t_s,rss_mb" >"$OUT/serve_soak.csv"
t0=$(date +%s)
while kill -0 $WRK 2>/dev/null; do
  kill -0 $PID 2>/dev/null || fail "the server died after $(( $(date +%s) - t0 )) s"
  echo "$(( $(date +%s) - t0 )),$(rss)" | tee -a "$OUT/serve_soak.csv" >&2
  sleep "$INTERVAL"
done
wait $WRK || fail "wrk failed: $(cat "$OUT/wrk.txt")"
kill -0 $PID 2>/dev/null || fail "the server died"
read -r _ n _ status sock _ <<<"$(grep '^RESULT' "$OUT/wrk.txt")"
echo "$(( $(date +%s) - t0 )),$(rss)" >>"$OUT/serve_soak.csv"
verdict=$(awk -F, -v w="$WARMUP" -v slack="$SLACK_MB" 'NR > 1 && $1 >= w {
    if (base == "") base = $2; if ($2 > max) max = $2; last = $2; n++ }
  END { if (n < 2) { print "FEW", base, max, last, n; exit }
        print (max - base <= slack ? "FLAT" : "GROWS"), base, max, last, n }' "$OUT/serve_soak.csv")
read -r flat base max last samples <<<"$verdict"
cat >"$OUT/serve_soak.json" <<JSON
{"duration_s": $DURATION, "connections": $CONNS, "threads": $THREADS, "requests": $n, "non_2xx": $status,
 "socket_errors": $sock, "warmup_s": $WARMUP, "rss_after_warmup_mb": $base, "rss_max_mb": $max,
 "rss_last_mb": $last, "samples": $samples, "slack_mb": $SLACK_MB, "verdict": "$flat"}
JSON
cat "$OUT/serve_soak.json" >&2
[ "$status" = 0 ] && [ "$sock" = 0 ] || fail "$status non-2xx and $sock socket errors in $n requests"
[ "$flat" = FLAT ] || fail "RSS not flat: $base MB after warm-up, $max MB max ($samples samples; $OUT/serve_soak.csv)"
step "PASS: $n requests, 0 errors, RSS $base -> max $max MB after warm-up (within $SLACK_MB MB)"
