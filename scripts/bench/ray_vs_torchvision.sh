#!/usr/bin/env bash
# Bulk classification on Ray Data, mnv2 against torchvision, same pipeline, same run:
#   read_images -> map_batches(callable class, one model per actor) -> Parquet
# (examples/ray_bulk_classify.py), on a local Ray cluster of $CPUS CPUs with $CPUS actors of
# one thread each. Images: the first $N of Fashion-MNIST's test set written as PNGs
# (scripts/train/fetch_fashion_mnist.sh; 28x28 grey, resized to 256 and cropped to 224 by
# both engines' torchvision transform, so the network cost is the full 224x224 one).
#
#   bash scripts/bench/ray_vs_torchvision.sh            # N=2000 CPUS=2 BATCH=32
#
# Prints a Markdown table (images/s per engine). Python: $PYTHON if set (it needs ray[data],
# pandas, pyarrow, pillow, torch, torchvision and the mobilenetv2 wheel installed), else a venv
# in $PY_BENCH_CACHE (default ~/.cache/mnv2-python/bench) made once with pip and given the wheel
# built here with maturin.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${N:-2000}
CPUS=${CPUS:-2}
BATCH=${BATCH:-32}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=${RAY_BENCH_OUT:-$TARGET/ray-bench}
WEIGHTS=$ROOT/weights/mobilenet_v2-b0353104.pth
[ -f "$WEIGHTS" ] || bash scripts/fetch_assets.sh
bash scripts/train/fetch_fashion_mnist.sh >/dev/null

if [ -z "${PYTHON:-}" ]; then
  CACHE=${PY_BENCH_CACHE:-$HOME/.cache/mnv2-python/bench}
  PACKAGES="maturin>=1.9,<2 ray[data] pandas pyarrow pillow numpy torch torchvision"
  if [ "$(cat "$CACHE/.packages" 2>/dev/null)" != "$PACKAGES" ]; then
    rm -rf "$CACHE" && python3 -m venv "$CACHE"
    # shellcheck disable=SC2086
    "$CACHE/bin/pip" install -q --disable-pip-version-check $PACKAGES
    echo "$PACKAGES" >"$CACHE/.packages"
  fi
  rm -f "$TARGET"/wheels/mobilenetv2-*.whl
  "$CACHE/bin/maturin" build --release --quiet -o "$TARGET/wheels"
  "$CACHE/bin/pip" install -q --force-reinstall --no-deps "$TARGET"/wheels/mobilenetv2-*.whl
  PYTHON=$CACHE/bin/python
fi

IMAGES=$WORK/fashion-mnist-test-$N
if [ ! -f "$IMAGES/.done" ]; then
  rm -rf "$IMAGES" && mkdir -p "$IMAGES"
  "$PYTHON" - "$ROOT/data/fashion-mnist/t10k-images-idx3-ubyte.gz" "$IMAGES" "$N" <<'PY'
import gzip, sys
from pathlib import Path
import numpy as np
from PIL import Image
src, out, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
raw = gzip.open(src).read()
count, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
pixels = np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols)
for i in range(min(n, count)):
    Image.fromarray(pixels[i]).save(out / f"{i:05d}.png")
PY
  touch "$IMAGES/.done"
fi

echo "| engine | images | seconds | images/s |"
echo "| --- | ---: | ---: | ---: |"
for engine in mnv2 torch; do
  rm -rf "$WORK/out-$engine"
  line=$("$PYTHON" examples/ray_bulk_classify.py --engine "$engine" --images "$IMAGES" --weights "$WEIGHTS" \
    --out "$WORK/out-$engine" --batch-size "$BATCH" --concurrency "$CPUS" --threads 1 --cpus "$CPUS" | tail -n1)
  "$PYTHON" -c 'import json, sys; print("| {engine} | {images} | {seconds:.1f} | {images_per_s:.1f} |".format(**json.loads(sys.argv[1])))' "$line"
done
