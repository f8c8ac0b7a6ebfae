#!/usr/bin/env bash
# Training images/s and peak RSS, mnv2 against PyTorch eager (channels_last, tuned allocator),
# same batch, input and threads, one after the other: 64x64 batch 128 and 224x224 batch 32.
# mnv2 trains on Fashion-MNIST resized to the input (from the ImageNet weights); PyTorch on
# random tensors (no data loading at all, which favours it). Steady state: the last window of
# --eval-every 4 steps. Run on an otherwise idle machine: 2 cores shared with anything else
# distort both, PyTorch's spinning OpenMP threads most.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-/work/pyenv/bin/python}
out=${1:-out/speed}
mkdir -p "$out"
bash scripts/train/fetch_fashion_mnist.sh >/dev/null
cargo build --release -q -p mnv2
mnv2=${CARGO_TARGET_DIR:-target}/release/mnv2
export GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
for cfg in "64 128 16" "224 32 12"; do
  set -- $cfg
  rm -rf "$out/mnv2-$1"
  /usr/bin/time -f "%M" -o "$out/mnv2-$1.maxrss" "$mnv2" train --data data/fashion-mnist --resolution "$1" --batch "$2" \
    --epochs 1 --max-steps "$3" --eval-every 4 --optimizer sgd --nesterov --lr 0.01 --augment crop-flip \
    --threads 2 --quiet --out "$out/mnv2-$1" 2>/dev/null
  ips=$(tail -1 "$out/mnv2-$1/metrics.jsonl" | "$py" -c 'import json,sys; print(round(json.load(sys.stdin)["images_per_s"], 1))')
  rss=$(( $(cat "$out/mnv2-$1.maxrss") / 1024 ))
  echo "mnv2  ${1}x${1} batch $2: $ips img/s, peak RSS $rss MB"
  "$py" scripts/train/fashion_mnist_vs_torch.py --threads 2 --bench "$1" "$2" "$(( $3 / 2 ))" | tee "$out/torch-$1.json" \
    | "$py" -c 'import json,sys; d=json.load(sys.stdin); print(f"torch {d[\"input\"]}x{d[\"input\"]} batch {d[\"batch\"]}: {d[\"images_per_s\"]:.1f} img/s, peak RSS {d[\"peak_rss_mb\"]:.0f} MB")'
done
