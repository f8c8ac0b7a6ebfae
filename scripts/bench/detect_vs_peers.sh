#!/usr/bin/env bash
# The SSDLite-MobileNetV2 detector's network (300x300 to the raw box encodings and class
# logits of all 1917 anchors) timed in mnv2 beside ONNX Runtime and OpenVINO running the same
# network (mnv2's ONNX export of the detector), in one run on one machine: batch 1 on 1 and 2
# threads, batch 8 on 2 threads (images/s), peak RSS per engine; a markdown table and JSON.
# Then the same for Mobile DeepLabv3 at 512x512, OS 16, batch 1 (random weights).
# Run it on an idle machine (the harness waits for a quiet one and flags contended rows).
#
#   bash scripts/bench/detect_vs_peers.sh [--passes N] [--smoke] [--only detect|segment]
#       results in bench/results/{detect,segment}.{md,json}; --smoke: 1 pass, few runs (checks the
#       pipeline, not a measurement). MNV2_MODES (default fast,streaming,fast-bf16) lists the
#       mnv2 rows: an engine mode, optionally with a precision (fast-bf16: --precision bf16).
#
# Needs weights/ssdlite_mobilenet_v2_person.pb (scripts/fetch_assets.sh) and python3 with
# venv/pip (the peers are installed from PyPI into $WORK/.venv, as scripts/bench/peers.sh does)
# and /usr/bin/time (GNU time, for peak RSS).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${WORK:-/tmp/mnv2-detect-peers}"
PASSES=3
RUNS=(--runs-b1 100 --runs-b8 30)
SMOKE=0
ONLY=
MODES="${MNV2_MODES:-fast,streaming,fast-bf16}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --passes) PASSES="$2"; shift 2 ;;
        --smoke) SMOKE=1; PASSES=1; RUNS=(--runs-b1 5 --runs-b8 2 --max-wait 0); shift ;;
        --only) ONLY="$2"; shift 2 ;;
        *) echo "detect_vs_peers.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
PB="$ROOT/weights/ssdlite_mobilenet_v2_person.pb"
[[ -f "$PB" ]] || { echo "detect_vs_peers.sh: $PB is missing: run scripts/fetch_assets.sh" >&2; exit 1; }
mkdir -p "$WORK"
if [[ ! -x "$WORK/.venv/bin/python" ]]; then
    python3 -m venv "$WORK/.venv"
    "$WORK/.venv/bin/pip" install --quiet numpy onnxruntime openvino
fi
PY="$WORK/.venv/bin/python"
ENGINES=mnv2,ort
"$PY" -c "import openvino" 2>/dev/null && ENGINES="$ENGINES,openvino" || echo "detect_vs_peers.sh: no OpenVINO, skipped" >&2

if [[ -z "${MNV2_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release -p mnv2)
    MNV2_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/mnv2"
fi
# The project's detector file and its network as ONNX (raw outputs; dynamic batch).
"$MNV2_BIN" convert "$PB" "$WORK/ssdlite.safetensors"
"$MNV2_BIN" export --weights "$WORK/ssdlite.safetensors" --out "$WORK/ssdlite.onnx" --dynamic-batch

mkdir -p "$ROOT/bench/results"
if [[ "$ONLY" != segment ]]; then
OUT="$ROOT/bench/results/detect"
[[ "$SMOKE" == 1 ]] && OUT="$WORK/smoke"
"$PY" "$ROOT/scripts/bench/detect_vs_peers.py" --bin "$MNV2_BIN" --weights "$WORK/ssdlite.safetensors" \
    --onnx "$WORK/ssdlite.onnx" --workdir "$WORK" --engines "$ENGINES" --mnv2-modes "$MODES" \
    --passes "$PASSES" "${RUNS[@]}" --out-md "$OUT.md" --out-json "$OUT.json"
echo "detect_vs_peers.sh: table in $OUT.md, data in $OUT.json"
fi
[[ "$ONLY" == detect ]] && exit 0

# The segmenter: Mobile DeepLabv3 (the paper's chosen head, 21 classes) at 512x512, OS 16, to
# its upsampled logits, batch 1. Random weights (timing does not depend on them; no pretrained
# DeepLab-MobileNetV2 ships), BatchNorm randomised so nothing folds to a no-op.
"$MNV2_BIN" init --head deeplab --output-stride 16 --classes 21 --resolution 512 --seed 0 --randomize-bn \
    --out "$WORK/deeplab.safetensors"
"$MNV2_BIN" export --weights "$WORK/deeplab.safetensors" --out "$WORK/deeplab.onnx" --dynamic-batch
OUT_SEG="$ROOT/bench/results/segment"
[[ "$SMOKE" == 1 ]] && OUT_SEG="$WORK/smoke_segment"
"$PY" "$ROOT/scripts/bench/detect_vs_peers.py" --bin "$MNV2_BIN" --weights "$WORK/deeplab.safetensors" \
    --onnx "$WORK/deeplab.onnx" --workdir "$WORK/segment" --engines "$ENGINES" --mnv2-modes "$MODES" \
    --resolution 512 --batch8-threads 0 --label "Mobile DeepLabv3 (OS 16, 21 classes), 512x512, upsampled logits" \
    --passes "$PASSES" "${RUNS[@]}" --out-md "$OUT_SEG.md" --out-json "$OUT_SEG.json"
echo "detect_vs_peers.sh: segmenter table in $OUT_SEG.md, data in $OUT_SEG.json"
