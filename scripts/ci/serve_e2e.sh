#!/usr/bin/env bash
# End-to-end tests of `mnv2 serve` against a real server on loopback, started with the real
# SSDLite person detector (--detector) and the small DeepLab test model (--segmenter):
#   1. tritonclient[http] from PyPI (crates/mnv2-serve/tests/py/tritonclient_test.py);
#   2. the web page in headless Chromium via playwright-core (crates/mnv2-serve/tests/browser/):
#      chelsea.png -> "Egyptian cat"; astronaut.png -> a "person" box and the mask drawn;
#   3. schemathesis against /openapi.json, bounded (SERVE_E2E_FUZZ_EXAMPLES per operation and
#      phase, default 100, about 30 s; killed after SERVE_E2E_FUZZ_SECONDS, default 300): no
#      5xx, no crash, and the server still answers afterwards;
#   4. SIGTERM: the server exits 0 after draining.
# Installs what it needs once (Debian chromium, npm playwright-core, a Python venv with
# tritonclient[http], Pillow and schemathesis) into $SERVE_E2E_CACHE; later runs reuse them.
# Each step is bounded by `timeout`; after the installs the whole run takes a few minutes.
#
# Env: MNV2 (the binary; default: built with cargo --release), SERVE_E2E_CACHE (default
# ~/.cache/mnv2-serve-e2e), SERVE_E2E_OUT (screenshots and logs; default
# $CARGO_TARGET_DIR/serve-e2e or target/serve-e2e), SERVE_E2E_SCREENSHOT=1 also copies the
# desktop screenshot to docs/serve.png.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CACHE=${SERVE_E2E_CACHE:-$HOME/.cache/mnv2-serve-e2e}
OUT=${SERVE_E2E_OUT:-$TARGET/serve-e2e}
WEIGHTS=$ROOT/weights/mobilenet_v2-b0353104.pth
DETECTOR=$ROOT/weights/ssdlite_mobilenet_v2_person.pb
SEGMENTER=$ROOT/tests/data/deeplab/w035.safetensors
SCHEMATHESIS_VERSION=4.32.5
mkdir -p "$CACHE" "$OUT"

step() { echo "== serve_e2e: $*"; }

[ -f "$WEIGHTS" ] && [ -f "$DETECTOR" ] && [ -f weights/calib/astronaut.png ] || bash scripts/fetch_assets.sh
if [ -z "${MNV2:-}" ]; then
  step "building mnv2 (release)"
  timeout 1800 cargo build --release -q -p mnv2
  MNV2=$TARGET/release/mnv2
fi

# --- installs (idempotent) ---
if [ ! -x /usr/bin/chromium ]; then
  step "installing Debian chromium"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  timeout 600 $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y -qq --no-install-recommends chromium
fi
if [ ! -f "$CACHE/node/node_modules/playwright-core/package.json" ]; then
  step "installing playwright-core (npm)"
  mkdir -p "$CACHE/node"
  timeout 600 npm install --silent --no-audit --no-fund --prefix "$CACHE/node" playwright-core@1
fi
if [ ! -f "$CACHE/venv/.ok" ]; then
  step "creating the Python venv (tritonclient[http], Pillow)"
  rm -rf "$CACHE/venv"
  timeout 120 python3 -m venv "$CACHE/venv"
  timeout 900 "$CACHE/venv/bin/pip" install -q "tritonclient[http]" pillow numpy
  touch "$CACHE/venv/.ok"
fi
if [ ! -f "$CACHE/venv/.schemathesis-$SCHEMATHESIS_VERSION" ]; then
  step "installing schemathesis $SCHEMATHESIS_VERSION into the venv"
  timeout 900 "$CACHE/venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
  touch "$CACHE/venv/.schemathesis-$SCHEMATHESIS_VERSION"
fi

# --- the server ---
LOG=$OUT/server.log
: >"$LOG"
step "starting $MNV2 serve"
"$MNV2" serve --weights "$WEIGHTS" --detector "$DETECTOR" --segmenter "$SEGMENTER" --addr 127.0.0.1:0 \
  --threads "${SERVE_E2E_THREADS:-2}" >"$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
ADDR=""
for _ in $(seq 1 300); do
  ADDR=$(sed -n 's|.*listening on http://\([0-9.:]*\).*|\1|p' "$LOG" | head -n1)
  [ -n "$ADDR" ] && break
  kill -0 $PID 2>/dev/null || { cat "$LOG"; echo "serve_e2e: the server exited"; exit 1; }
  sleep 0.2
done
[ -n "$ADDR" ] || { cat "$LOG"; echo "serve_e2e: the server did not start within 60 s"; exit 1; }
step "server at http://$ADDR"

step "tritonclient[http]"
timeout 120 "$CACHE/venv/bin/python" crates/mnv2-serve/tests/py/tritonclient_test.py --url "$ADDR" --root "$ROOT"

step "browser (chromium + playwright-core)"
PLAYWRIGHT_CORE=$CACHE/node/node_modules/playwright-core timeout 120 \
  node crates/mnv2-serve/tests/browser/classify.cjs "http://$ADDR/" "$ROOT/tests/data/images/chelsea.png" "$OUT"
PLAYWRIGHT_CORE=$CACHE/node/node_modules/playwright-core timeout 240 \
  node crates/mnv2-serve/tests/browser/detect.cjs "http://$ADDR/" "$ROOT/weights/calib/astronaut.png" "$OUT"
if [ "${SERVE_E2E_SCREENSHOT:-0}" = 1 ]; then
  cp "$OUT/serve-desktop.png" docs/serve.png
  cp "$OUT/serve-detect.png" docs/serve-detect.png
  step "docs/serve.png and docs/serve-detect.png updated"
fi

step "schemathesis against /openapi.json (no 5xx, no crash)"
t0=$(date +%s)
rc=0
# From $OUT: schemathesis keeps a .schemathesis/ directory where it runs.
(cd "$OUT" && timeout "${SERVE_E2E_FUZZ_SECONDS:-300}" "$CACHE/venv/bin/schemathesis" run "http://$ADDR/openapi.json" \
  --checks not_a_server_error --max-examples "${SERVE_E2E_FUZZ_EXAMPLES:-100}" --workers 1 --seed 15 \
  --generation-database none --request-timeout 60 --no-color --report junit --report-dir "$OUT/schemathesis") || rc=$?
step "schemathesis took $(( $(date +%s) - t0 )) s"
kill -0 $PID 2>/dev/null || { cat "$LOG"; echo "serve_e2e: the server died under schemathesis"; exit 1; }
[ $rc = 0 ] || { echo "serve_e2e: schemathesis found failures (exit $rc; report in $OUT/schemathesis)"; exit 1; }
curl -sf -o /dev/null --data-binary @tests/data/images/chelsea.png -H 'Content-Type: image/png' "http://$ADDR/v1/classify" \
  || { echo "serve_e2e: the server stopped answering after schemathesis"; exit 1; }

step "SIGTERM drains and exits 0"
kill -TERM $PID
rc=0
timeout 30 tail --pid=$PID -f /dev/null || rc=$?
[ $rc = 0 ] || { echo "serve_e2e: the server did not stop within 30 s of SIGTERM"; exit 1; }
wait $PID || rc=$?
trap - EXIT
[ $rc = 0 ] || { cat "$LOG"; echo "serve_e2e: the server exited with $rc after SIGTERM"; exit 1; }
grep -q "shutting down" "$LOG"
step "PASS (screenshots and server log in $OUT)"
