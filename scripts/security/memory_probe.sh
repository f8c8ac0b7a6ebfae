#!/usr/bin/env bash
# Issue 17's memory bound, measured: no input file of at most 64 MB may make an `mnv2` command
# use more than 1 GB. The worst legitimate cases are int8 models, whose every byte of weights
# becomes at least a 4-byte float; this makes three of about 63 MB (a width-0.35 MobileNetV2
# with 48,000 classes: almost all of it the classifier) and measures each command's peak RSS
# with /usr/bin/time:
#   - int8 safetensors (mnv2 init + mnv2 quantize),
#   - int8 QDQ ONNX (mnv2 export of it),
#   - full-integer int8 TFLite (TensorFlow's converter, scripts/security/big_tflite.py; needs
#     the `interop` Python set, or PYTHON with tensorflow-cpu and keras; skipped, saying so, with
#     NO_TF=1),
# then `mnv2 classify`, `info --weights`, `convert` and `export` on each. Fails if any exceeds
# LIMIT_KB (default 1 GiB). Usage: scripts/security/memory_probe.sh [OUT] (default
# out/memory-probe; about 2 minutes plus the TFLite conversion).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-out/memory-probe}
limit=${LIMIT_KB:-1048576}
mkdir -p "$out"
cargo build --release -q -p mnv2
mnv2=${CARGO_TARGET_DIR:-target}/release/mnv2
photo=tests/data/images/chelsea.png

"$mnv2" init --width 0.35 --classes 48000 --resolution 64 --randomize-bn --out "$out/big_f32.safetensors" >/dev/null
"$mnv2" quantize --weights "$out/big_f32.safetensors" --calib tests/data/images --images 4 --out "$out/big_int8.safetensors" >/dev/null 2>&1
"$mnv2" export --weights "$out/big_int8.safetensors" --out "$out/big_int8.onnx" >/dev/null
files=("$out/big_int8.safetensors" "$out/big_int8.onnx")
if [ "${NO_TF:-0}" = 1 ]; then
  echo "TFLite: skipped (NO_TF=1)"
else
  source scripts/lib/venv.sh
  py="$(mnv2_python interop)"
  [ -f "$out/big_int8.tflite" ] || "$py" scripts/security/big_tflite.py "$out/big_int8.tflite" 48000 >/dev/null
  files+=("$out/big_int8.tflite")
fi

fail=0
printf '%-24s %10s  %-10s %12s\n' file MB command "peak RSS MB"
for f in "${files[@]}"; do
  mb=$(( $(stat -c %s "$f") / 1000000 ))
  for cmd in classify info convert export; do
    case $cmd in
      classify) args=(classify --weights "$f" "$photo") ;;
      info) args=(info --weights "$f") ;;
      convert) args=(convert "$f" "$out/converted.safetensors") ;;
      export) args=(export --weights "$f" --out "$out/exported.onnx") ;;
    esac
    /usr/bin/time -f %M -o "$out/rss" "$mnv2" "${args[@]}" >/dev/null 2>"$out/err" || {
      echo "$f: mnv2 $cmd failed: $(tail -1 "$out/err")"; fail=1; }
    kb=$(tail -1 "$out/rss")
    printf '%-24s %10s  %-10s %12d\n' "$(basename "$f")" "$mb" "$cmd" $((kb / 1024))
    [ "$kb" -le "$limit" ] || { echo "  over the limit of $((limit / 1024)) MB"; fail=1; }
  done
done
rm -f "$out/converted.safetensors" "$out/exported.onnx"
exit $fail
