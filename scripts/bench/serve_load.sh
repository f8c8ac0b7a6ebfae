#!/usr/bin/env bash
# Load test, loopback only: `mnv2 serve` against the typical Python deployment of the same
# model (ONNX Runtime behind FastAPI on uvicorn, scripts/bench/serve_onnx_fastapi.py, the
# model exported by `mnv2 export --format onnx`). Both get the same engine threads and the
# same requests: chelsea.png posted raw to POST /v1/classify, by wrk at 1, 8 and 64
# connections. Reported per run: images/s, p50 and p99 latency, errors (non-2xx, socket
# errors), and the server's peak RSS (VmHWM since it started).
#
# Usage: scripts/bench/serve_load.sh          (env: DURATION=10 seconds per run, THREADS=2,
#        CONNS="1 8 64", MNV2=binary, SERVE_LOAD_CACHE, SERVE_LOAD_OUT)
# The load generator shares the machine with the servers: on a small machine it takes CPU
# from them, so compare the two servers with each other, not with `mnv2 bench`.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
CONNS=${CONNS:-"1 8 64"}
CACHE=${SERVE_LOAD_CACHE:-$HOME/.cache/mnv2-serve-load}
OUT=${SERVE_LOAD_OUT:-$TARGET/serve-load}
WEIGHTS=$ROOT/weights/mobilenet_v2-b0353104.pth
PHOTO=$ROOT/tests/data/images/chelsea.png
HOST=127.0.0.1
mkdir -p "$CACHE" "$OUT"
step() { echo "== serve_load: $*" >&2; }

[ -f "$WEIGHTS" ] || bash scripts/fetch_assets.sh
if [ -z "${MNV2:-}" ]; then
  step "building mnv2 (release)"
  timeout 1800 cargo build --release -q -p mnv2
  MNV2=$TARGET/release/mnv2
fi
if ! command -v wrk >/dev/null; then
  step "installing wrk (apt)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  timeout 600 $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 600 $SUDO apt-get install -y -qq --no-install-recommends wrk
fi
if [ ! -f "$CACHE/venv/.ok" ]; then
  step "creating the Python venv (onnxruntime, fastapi, uvicorn, pillow)"
  rm -rf "$CACHE/venv"
  python3 -m venv "$CACHE/venv"
  timeout 900 "$CACHE/venv/bin/pip" install -q onnxruntime fastapi uvicorn pillow numpy
  touch "$CACHE/venv/.ok"
fi
ONNX=$OUT/mobilenet_v2.onnx
[ -f "$ONNX" ] || "$MNV2" export --weights "$WEIGHTS" --format onnx --dynamic-batch --out "$ONNX" >&2

cat >"$OUT/post.lua" <<LUA
local f = assert(io.open("$PHOTO", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "image/png"
done = function(s, latency, requests)
  local e = s.errors
  io.write(string.format("RESULT %d %.3f %d %d %.1f %.1f\n", s.requests, s.duration / 1e6, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
LUA

wait_ready() {  # URL PID
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null -X POST --data-binary @"$PHOTO" -H 'Content-Type: image/png' "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

# RUN NAME URL PID: one table row per connection count.
run() {
  local name=$1 url=$2 pid=$3
  case $url in "http://$HOST:"*) ;; *) echo "not loopback: $url"; exit 1 ;; esac
  timeout 60 wrk -t 2 -c 8 -d 2s --timeout 30s -s "$OUT/post.lua" "$url" >/dev/null  # warm-up
  for c in $CONNS; do
    local t=$(( c < 2 ? c : 2 ))
    local line
    line=$(timeout $((DURATION + 60)) wrk -t "$t" -c "$c" -d "${DURATION}s" --timeout 30s -s "$OUT/post.lua" "$url" | grep '^RESULT')
    read -r _ n secs status sock p50 p99 <<<"$line"
    local rss
    rss=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
    printf '| %s | %d | %.1f | %.1f | %.1f | %d | %s |\n' "$name" "$c" "$(echo "$n / $secs" | bc -l)" "$p50" "$p99" \
      $((status + sock)) "$rss"
  done
}

TABLE=$OUT/serve_load.md
{
  echo "DURATION=${DURATION}s per run, THREADS=$THREADS, CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores"
  echo
  echo "| server | connections | images/s | p50 ms | p99 ms | errors | peak RSS MB |"
  echo "|---|---|---|---|---|---|---|"
} >"$TABLE"

step "mnv2 serve --threads $THREADS"
"$MNV2" serve --weights "$WEIGHTS" --addr $HOST:18080 --threads "$THREADS" >"$OUT/mnv2.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
wait_ready "http://$HOST:18080/v1/classify" $PID || { cat "$OUT/mnv2.log"; exit 1; }
run "mnv2 serve" "http://$HOST:18080/v1/classify" $PID | tee -a "$TABLE"
kill -TERM $PID; wait $PID || true

step "ONNX Runtime + FastAPI/uvicorn, $THREADS intra-op threads"
MODEL=$ONNX THREADS=$THREADS "$CACHE/venv/bin/python" -m uvicorn --app-dir "$ROOT/scripts/bench" serve_onnx_fastapi:app \
  --host $HOST --port 18081 --log-level warning >"$OUT/fastapi.log" 2>&1 &
PID=$!
wait_ready "http://$HOST:18081/v1/classify" $PID || { cat "$OUT/fastapi.log"; exit 1; }
run "onnxruntime+fastapi" "http://$HOST:18081/v1/classify" $PID | tee -a "$TABLE"
kill -TERM $PID; wait $PID || true
trap - EXIT
step "table in $TABLE"
cat "$TABLE"
