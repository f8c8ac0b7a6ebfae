#!/usr/bin/env bash
# Fine-tunes torchvision's ImageNet MobileNetV2 on Fashion-MNIST with mnv2 and with tuned PyTorch
# (same recipe, same machine, one after the other; see fashion_mnist_vs_torch.py), then prints
# the time each needed to reach 93% test accuracy, their ratio, final accuracies and peak RSS.
# Usage: scripts/train/fashion_mnist_vs_torch.sh [OUT] (default out/fashion-mnist). ~40 minutes
# on 2 cores. PYTHON may point at a Python with torch and torchvision.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-out/fashion-mnist}
py=${PYTHON:-/work/pyenv/bin/python}
mkdir -p "$out"
bash scripts/train/fetch_fashion_mnist.sh >/dev/null
[ -f weights/mobilenet_v2-b0353104.pth ] || bash scripts/fetch_assets.sh
cargo build --release -q -p mnv2
mnv2=${CARGO_TARGET_DIR:-target}/release/mnv2
steps=$(( (60000 + 127) / 128 / 4 ))

echo "== mnv2"
/usr/bin/time -f "%M" -o "$out/mnv2.maxrss" "$mnv2" train --data data/fashion-mnist --val data/fashion-mnist \
  --init weights/mobilenet_v2-b0353104.pth --resolution 64 --batch 128 --epochs 6 \
  --optimizer sgd --nesterov --momentum 0.9 --lr 0.05 --schedule cosine --warmup 0.25 \
  --label-smoothing 0.1 --weight-decay 4e-5 --dropout 0.2 --augment crop-flip --eval-every "$steps" \
  --threads 2 --quiet --out "$out/mnv2"

echo "== torch (tuned allocator, channels_last, 2 threads)"
GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \
  /usr/bin/time -f "%M" -o "$out/torch.maxrss" "$py" scripts/train/fashion_mnist_vs_torch.py --threads 2 \
  | tee "$out/torch_metrics.jsonl"

"$py" - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(p): return [json.loads(l) for l in open(p) if l.strip()]
def first(ms, thr):
    return next((m["train_seconds"] for m in ms if (m.get("val_top1") or 0) >= thr), None)
mn, th = load(out / "mnv2" / "metrics.jsonl"), load(out / "torch_metrics.jsonl")
rss = {k: int(open(out / f"{k}.maxrss").read().split()[-1]) / 1024 for k in ("mnv2", "torch")}
res = {}
for name, ms in (("mnv2", mn), ("torch", th)):
    res[name] = dict(t93=first(ms, 0.93), t92=first(ms, 0.92), final=ms[-1]["val_top1"],
                     train_seconds=ms[-1]["train_seconds"], peak_rss_mb=rss[name])
    print(f"{name}: 92% after {res[name]['t92']} s, 93% after {res[name]['t93']} s, final top-1 "
          f"{100 * res[name]['final']:.2f}% after {res[name]['train_seconds']:.0f} s, peak RSS {rss[name]:.0f} MB")
if res["mnv2"]["t93"] and res["torch"]["t93"]:
    print(f"time to 93%: mnv2 / torch = {res['mnv2']['t93'] / res['torch']['t93']:.2f}")
(out / "summary.json").write_text(json.dumps(res, indent=1) + "\n")
PY
