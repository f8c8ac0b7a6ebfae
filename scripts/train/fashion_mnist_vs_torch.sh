#!/usr/bin/env bash
# Fine-tunes torchvision's ImageNet MobileNetV2 on Fashion-MNIST with mnv2 and with tuned PyTorch
# (same recipe, same machine, one after the other; see fashion_mnist_vs_torch.py), then prints
# the time each needed to reach 93% test accuracy, their ratio, final accuracies and peak RSS.
# Usage: scripts/train/fashion_mnist_vs_torch.sh [OUT] [SEED] (default out/fashion-mnist, seed 0;
# the seed goes to both engines: data order, augmentation and the new classifier). ~20 minutes
# on 2 cores. scripts/train/fashion_mnist_seeds.sh runs it over several seeds. PYTHON may
# point at a Python with torch and torchvision; without it the script
# makes its own virtualenv (scripts/lib/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-out/fashion-mnist}
seed=${2:-0}
source scripts/lib/venv.sh
py="$(mnv2_python torch)"
mkdir -p "$out"
bash scripts/train/fetch_fashion_mnist.sh >/dev/null
[ -f weights/mobilenet_v2-b0353104.pth ] || bash scripts/fetch_assets.sh
cargo build --release -q -p mnv2
mnv2=${CARGO_TARGET_DIR:-target}/release/mnv2
steps=$(( (60000 + 127) / 128 / 4 ))

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== mnv2"
/usr/bin/time -f "%M" -o "$out/mnv2.maxrss" "$mnv2" train --data data/fashion-mnist --val data/fashion-mnist \
  --init weights/mobilenet_v2-b0353104.pth --resolution 64 --batch 128 --epochs 6 \
  --optimizer sgd --nesterov --momentum 0.9 --lr 0.05 --schedule cosine --warmup 0.25 \
  --label-smoothing 0.1 --weight-decay 4e-5 --dropout 0.2 --augment crop-flip --eval-every "$steps" \
  --seed "$seed" --threads 2 --quiet --out "$out/mnv2"

echo "== torch (tuned allocator, channels_last, 2 threads)"
GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \
  /usr/bin/time -f "%M" -o "$out/torch.maxrss" "$py" scripts/train/fashion_mnist_vs_torch.py --threads 2 --seed "$seed" \
  | tee "$out/torch_metrics.jsonl"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

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

# Test accuracy against training time, both engines, as a small PNG (PIL only).
from PIL import Image, ImageDraw, ImageFont
W, H, L, R, T, B = 720, 400, 60, 20, 30, 45
img = Image.new("RGB", (W, H), "white")
d = ImageDraw.Draw(img)
font = ImageFont.load_default()
tmax = max(ms[-1]["train_seconds"] for ms in (mn, th)) * 1.02
lo, hi = 0.80, 0.96
x = lambda t: L + (W - L - R) * t / tmax
y = lambda a: H - B - (H - T - B) * (min(max(a, lo), hi) - lo) / (hi - lo)
for a in (0.80, 0.84, 0.88, 0.92, 0.93, 0.96):
    d.line([(L, y(a)), (W - R, y(a))], fill=(150, 150, 150) if a == 0.93 else (225, 225, 225))
    d.text((8, y(a) - 6), f"{100 * a:.0f}%", fill="black", font=font)
step = 100 if tmax < 1500 else 200
for t in range(0, int(tmax) + 1, step):
    d.line([(x(t), H - B), (x(t), H - B + 4)], fill="black")
    d.text((x(t) - 10, H - B + 8), f"{t}", fill="black", font=font)
d.rectangle([L, T, W - R, H - B], outline="black")
for ms, color, name in ((mn, (31, 119, 180), "mnv2"), (th, (255, 127, 14), "PyTorch (tuned, channels_last)")):
    pts = [(x(m["train_seconds"]), y(m["val_top1"])) for m in ms if m.get("val_top1") is not None]
    d.line(pts, fill=color, width=2)
    for p in pts:
        d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=color)
d.text((L + 10, T + 8), "mnv2", fill=(31, 119, 180), font=font)
d.text((L + 10, T + 22), "PyTorch (tuned allocator, channels_last)", fill=(255, 127, 14), font=font)
d.text((W // 2 - 150, 8), "Fashion-MNIST test top-1 vs training seconds (2 threads)", fill="black", font=font)
d.text((W // 2 - 40, H - 18), "training seconds", fill="black", font=font)
img.save(out / "compare.png", optimize=True)
PY
