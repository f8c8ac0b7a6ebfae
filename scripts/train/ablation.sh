#!/usr/bin/env bash
# The paper's ablation (Sandler et al. 2018, figure 6) in miniature: MobileNetV2 trained from
# scratch on Fashion-MNIST with the same budget for every variant, comparing
#   linear bottleneck (the paper's)  vs  ReLU6 after the projection (--bottleneck relu6),
#   shortcut between bottlenecks     vs  no residual connections   (--shortcut none).
# Recipe (the fine-tuning run's, from random weights): inputs resized to RES (default 32),
# batch 128, SGD with Nesterov momentum 0.9, lr LR (default 0.1) with 0.25 epoch of warm-up
# then a cosine over EPOCHS (default 6), label smoothing 0.1, weight decay 4e-5, pad-and-crop +
# flip, dropout 0.2, 2 threads; test accuracy after every epoch. Each variant runs for every
# seed in SEEDS (default "0 1 2"); the summary gives final test top-1 per seed, the mean, and
# whether the paper's ordering holds (linear > relu6, shortcut > none, on the mean).
# Usage: scripts/train/ablation.sh [OUT] (default out/ablation); ~25 minutes at the defaults.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-out/ablation}
res=${RES:-32}
epochs=${EPOCHS:-6}
lr=${LR:-0.1}
seeds=${SEEDS:-0 1 2}
py=${PYTHON:-python3}
mkdir -p "$out"
bash scripts/train/fetch_fashion_mnist.sh >/dev/null
cargo build --release -q -p mnv2
mnv2=${CARGO_TARGET_DIR:-target}/release/mnv2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for seed in $seeds; do
  for variant in linear relu6 noshortcut; do
    case $variant in
      linear) extra=() ;;
      relu6) extra=(--bottleneck relu6) ;;
      noshortcut) extra=(--shortcut none) ;;
    esac
    dir="$out/$variant-seed$seed"
    [ -f "$dir/final.safetensors" ] && { echo "$dir: done"; continue; }
    echo "== $variant, seed $seed"
    "$mnv2" train --data data/fashion-mnist --val data/fashion-mnist --resolution "$res" --batch 128 \
      --epochs "$epochs" --optimizer sgd --nesterov --momentum 0.9 --lr "$lr" --schedule cosine --warmup 0.25 \
      --label-smoothing 0.1 --weight-decay 4e-5 --dropout 0.2 --augment crop-flip --seed "$seed" \
      --threads 2 --quiet --out "$dir" "${extra[@]}" 2>&1 | grep -E "^epoch [0-9.]+ step" | tail -1
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" - "$out" "$seeds" <<'PY'
import json, sys
from pathlib import Path
out, seeds = Path(sys.argv[1]), sys.argv[2].split()
res = {}
for v in ("linear", "relu6", "noshortcut"):
    accs = []
    for s in seeds:
        ms = [json.loads(l) for l in open(out / f"{v}-seed{s}" / "metrics.jsonl") if l.strip()]
        accs.append(ms[-1]["val_top1"])
    res[v] = dict(top1=accs, mean=sum(accs) / len(accs))
    print(f"{v:11} test top-1 " + " ".join(f"{100 * a:.2f}%" for a in accs) + f"  mean {100 * res[v]['mean']:.2f}%")
lin, r6, ns = (res[v]["mean"] for v in ("linear", "relu6", "noshortcut"))
wins = lambda a, b: sum(x > y for x, y in zip(res[a]["top1"], res[b]["top1"]))
print(f"linear bottleneck vs relu6: {100 * (lin - r6):+.2f} points on the mean ({wins('linear', 'relu6')}/{len(seeds)} seeds): "
      + ("the paper's ordering holds" if lin > r6 else "the paper's ordering does NOT hold"))
print(f"shortcut vs none:           {100 * (lin - ns):+.2f} points on the mean ({wins('linear', 'noshortcut')}/{len(seeds)} seeds): "
      + ("the paper's ordering holds" if lin > ns else "the paper's ordering does NOT hold"))
res["seeds"] = seeds
(out / "summary.json").write_text(json.dumps(res, indent=1) + "\n")
PY
