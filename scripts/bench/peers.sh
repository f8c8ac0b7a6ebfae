#!/usr/bin/env bash
# Times mnv2 beside ONNX Runtime, OpenVINO and LiteRT/XNNPACK in the same run, on the same
# weights (a torchvision MobileNetV2, seed 0), with the workplace's peer harness
# (shared/bench/peers: it waits for a quiet machine, retries contended runs, and measures peak
# RSS with /usr/bin/time). fp32 first, then int8 (mnv2 quantised on the same 16 synthetic
# calibration images the peers' int8 models used), then bf16 (mnv2 --precision bf16 beside
# OpenVINO's bf16 hint and mnv2 fp32).
#
#   bash scripts/bench/peers.sh [--passes N]        results in bench/results/{fp32,int8,bf16}.md
#   PARTS="bf16" bash scripts/bench/peers.sh ...     only some of the parts (default: fp32 int8 bf16)
#
# Needs python3 with venv/pip (the peers are installed from PyPI into $WORK/.venv).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEERS_SRC="${PEERS_SRC:-$ROOT/../shared/bench/peers}"
WORK="${WORK:-/tmp/mnv2-peers}"
PASSES=3
[[ "${1:-}" == "--passes" ]] && PASSES="$2"

[[ -f "$PEERS_SRC/run_peers.py" ]] || { echo "peers.sh: no harness at $PEERS_SRC (set PEERS_SRC)" >&2; exit 1; }
mkdir -p "$WORK"
cp -r "$PEERS_SRC/." "$WORK/"
if [[ ! -x "$WORK/.venv/bin/python" ]]; then
    python3 -m venv "$WORK/.venv"
    "$WORK/.venv/bin/pip" install --quiet numpy safetensors onnxruntime openvino ai-edge-litert
fi
PY="$WORK/.venv/bin/python"

(cd "$ROOT" && cargo build --release -p mnv2)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/mnv2"

# The peers' int8 calibration set: 16 images drawn like the benchmark input (run_peers.py's
# calib_images: numpy default_rng(100 + i), standard normal).
"$PY" - "$WORK/calib16.npy" <<'PYEOF'
import sys, numpy as np
x = np.concatenate([np.random.default_rng(100 + i).standard_normal((1, 3, 224, 224)).astype(np.float32) for i in range(16)])
np.save(sys.argv[1], x)
PYEOF
"$BIN" quantize --weights "$WORK/models/mobilenet_v2_seed0.safetensors" --calib "$WORK/calib16.npy" \
    --out "$WORK/mnv2_seed0_int8.safetensors"

mkdir -p "$ROOT/bench/results"
cd "$WORK"
PARTS="${PARTS:-fp32 int8 bf16}"
for part in $PARTS; do
    case "$part" in
        fp32) MNV2_BIN="$BIN" "$PY" run_peers.py --engines mnv2,ort,openvino,tflite --passes "$PASSES" ;;
        int8) MNV2_BIN="$BIN" MNV2_INT8_WEIGHTS="$WORK/mnv2_seed0_int8.safetensors" "$PY" run_peers.py \
                  --engines mnv2_int8,ort_int8,openvino_int8,tflite_int8 --passes "$PASSES" ;;
        bf16) MNV2_BIN="$BIN" "$PY" run_peers.py --engines mnv2_bf16,openvino_bf16,mnv2 --passes "$PASSES" ;;
        *) echo "peers.sh: unknown part $part (fp32, int8, bf16)" >&2; exit 2 ;;
    esac
    cp results/results.md "$ROOT/bench/results/$part.md"
    cp results/raw.json "$ROOT/bench/results/$part.json"
    echo "peers.sh: table in bench/results/$part.md"
done
