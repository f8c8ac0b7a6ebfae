#!/usr/bin/env bash
# Load test, loopback only (issue 15's protocol): `mnv2 serve` against the typical Python
# deployment of the same model (ONNX Runtime behind FastAPI on uvicorn,
# scripts/bench/serve_onnx_fastapi.py, the model exported by `mnv2 export --format onnx`). Both
# get the same engine threads and the same requests: chelsea.png posted raw to
# POST /v1/classify by wrk, at 1, 8 and 64 connections, DURATION seconds each (30 by default),
# after a 2 s warm-up. Each server is started fresh for each connection count, so its peak RSS
# (VmHWM) is that run's (loading the model included). Reported per run: images/s, p50 and p99
# latency, errors (non-2xx and socket errors), peak RSS and RSS at the end. Writes
# $OUT/serve_load.json and $OUT/serve_load.md and prints the table and the images/s ratio.
#
# Usage: scripts/bench/serve_load.sh          (env: DURATION=30, THREADS=2, CONNS="1 8 64",
#        MNV2=binary, SERVE_LOAD_CACHE, SERVE_LOAD_OUT, SERVERS="mnv2 onnx")
# On a machine with few cores the load generator takes CPU from the servers: run it on an
# otherwise idle machine, and compare the two servers with each other, not with `mnv2 bench`.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
DURATION=${DURATION:-30}
THREADS=${THREADS:-2}
CONNS=${CONNS:-"1 8 64"}
SERVERS=${SERVERS:-"mnv2 onnx"}
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
source scripts/lib/wrk.sh
ensure_wrk
if [ ! -f "$CACHE/venv/.ok" ]; then
  step "creating the Python venv (onnxruntime, fastapi, uvicorn, pillow)"
  rm -rf "$CACHE/venv"
  python3 -m venv "$CACHE/venv"
  timeout 900 "$CACHE/venv/bin/pip" install -q onnxruntime fastapi uvicorn pillow numpy
  touch "$CACHE/venv/.ok"
fi
ONNX=$OUT/mobilenet_v2.onnx
[ -f "$ONNX" ] || "$MNV2" export --weights "$WEIGHTS" --format onnx --dynamic-batch --out "$ONNX" >&2

wrk_post_lua "$OUT/post.lua" "$PHOTO"

wait_ready() {  # URL PID
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null -X POST --data-binary @"$PHOTO" -H 'Content-Type: image/png' "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

start_server() {  # NAME -> PID, URL, LOG
  case $1 in
    mnv2)
      LOG=$OUT/mnv2.log
      "$MNV2" serve --weights "$WEIGHTS" --addr $HOST:18080 --threads "$THREADS" >"$LOG" 2>&1 &
      PID=$!
      URL=http://$HOST:18080/v1/classify ;;
    onnx)
      LOG=$OUT/fastapi.log
      MODEL=$ONNX THREADS=$THREADS "$CACHE/venv/bin/python" -m uvicorn --app-dir "$ROOT/scripts/bench" \
        serve_onnx_fastapi:app --host $HOST --port 18081 --log-level warning >"$LOG" 2>&1 &
      PID=$!
      URL=http://$HOST:18081/v1/classify ;;
  esac
  wait_ready "$URL" $PID || { cat "$LOG"; exit 1; }
}

label() { case $1 in mnv2) echo "mnv2 serve" ;; onnx) echo "onnxruntime+fastapi" ;; esac; }

JSONL=$OUT/serve_load.jsonl
: >"$JSONL"
PID=""
trap '[ -n "$PID" ] && kill $PID 2>/dev/null || true' EXIT
for server in $SERVERS; do
  for c in $CONNS; do
    step "$(label $server): $c connections, ${DURATION}s"
    start_server "$server"
    case $URL in "http://$HOST:"*) ;; *) echo "not loopback: $URL"; exit 1 ;; esac
    timeout 60 wrk -t 2 -c 8 -d 2s --timeout 30s -s "$OUT/post.lua" "$URL" >/dev/null  # warm-up
    t=$(( c < 2 ? c : 2 ))
    line=$(timeout $((DURATION + 60)) wrk -t "$t" -c "$c" -d "${DURATION}s" --timeout 30s -s "$OUT/post.lua" "$URL" | grep '^RESULT')
    read -r _ n secs status sock p50 p99 <<<"$line"
    hwm=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$PID/status")
    rss=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$PID/status")
    kill -TERM $PID; wait $PID || true
    PID=""
    printf '{"server": "%s", "connections": %d, "duration_s": %s, "requests": %d, "images_per_s": %.2f, "p50_ms": %s, "p99_ms": %s, "errors": %d, "peak_rss_mb": %s, "rss_end_mb": %s}\n' \
      "$(label $server)" "$c" "$secs" "$n" "$(echo "$n / $secs" | bc -l)" "$p50" "$p99" $((status + sock)) "$hwm" "$rss" >>"$JSONL"
  done
done
trap - EXIT

CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)
"$CACHE/venv/bin/python" - "$JSONL" "$OUT" "$DURATION" "$THREADS" "$CPU" "$(nproc)" <<'PY'
import json, sys, datetime
jsonl, out, duration, threads, cpu, cores = sys.argv[1:]
runs = [json.loads(l) for l in open(jsonl) if l.strip()]
doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "duration_s": int(duration),
       "threads": int(threads), "cpu": cpu, "cores": int(cores), "runs": runs}
by = {(r["server"], r["connections"]): r for r in runs}
ratio = {}
for (server, c), r in by.items():
    other = by.get(("onnxruntime+fastapi", c))
    if server == "mnv2 serve" and other and other["images_per_s"] > 0:
        ratio[str(c)] = round(r["images_per_s"] / other["images_per_s"], 2)
doc["images_per_s_ratio_mnv2_over_onnx"] = ratio
json.dump(doc, open(f"{out}/serve_load.json", "w"), indent=1)
lines = [f"{doc['date']}: {duration} s per run, THREADS={threads}, CPU: {cpu}, {cores} cores", "",
         "| server | connections | images/s | p50 ms | p99 ms | errors | peak RSS MB | RSS at end MB |",
         "|---|---|---|---|---|---|---|---|"]
for r in runs:
    lines.append(f"| {r['server']} | {r['connections']} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                 f"{r['errors']} | {r['peak_rss_mb']:.1f} | {r['rss_end_mb']:.1f} |")
if ratio:
    lines += ["", "images/s, mnv2 serve / onnxruntime+fastapi: " + ", ".join(f"{c} connections {v}x" for c, v in ratio.items())]
open(f"{out}/serve_load.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
step "results in $OUT/serve_load.json and $OUT/serve_load.md"
