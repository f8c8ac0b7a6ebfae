#!/usr/bin/env bash
# Segmentation training images/s and peak RSS: `mnv2 train --task segmentation --head deeplab`
# against the same network and loss in PyTorch eager (scripts/train/seg_speed_vs_torch.py,
# channels_last), same crop, batch and threads (2), in one run. mnv2 trains on a composed scene
# set (data loading, random scale/crop/flip and the optimizer included; steady state = the last
# window of --eval-every 4 steps, evaluation excluded); PyTorch on random tensors (no data
# loading, which favours it). The two alternate REPS times (default 3) and the best run of each
# counts, which filters out interference; run on an otherwise idle machine.
# Usage: scripts/train/seg_speed_vs_torch.sh [OUT] (default out/seg_speed); writes OUT/summary.json.
# CROP (257) and BATCH (8) choose the configuration.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/venv.sh
py="$(mnv2_python torch)"
out=${1:-out/seg_speed}
reps=${REPS:-3}
crop=${CROP:-257}
batch=${BATCH:-8}
mkdir -p "$out"
cargo build --release -q -p mnv2
mnv2=${CARGO_TARGET_DIR:-target}/release/mnv2
if [[ ! -d "$out/scenes" ]]; then
  bash scripts/train/fetch_fashion_mnist.sh >/dev/null && bash scripts/fetch_backgrounds.sh >/dev/null
  "$mnv2" dataset compose --out "$out/scenes" --train 256 --val 4 --size 320 --seed 0 --jpeg 90 >/dev/null
fi
[[ -f weights/mobilenet_v2-b0353104.pth ]] || bash scripts/fetch_assets.sh >/dev/null
export GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
: > "$out/runs.jsonl"
for rep in $(seq "$reps"); do
  rm -rf "$out/mnv2"
  /usr/bin/time -f "%M" -o "$out/mnv2.maxrss" "$mnv2" train --task segmentation --head deeplab \
    --data "$out/scenes" --init weights/mobilenet_v2-b0353104.pth --output-stride 16 --crop "$crop" \
    --batch "$batch" --steps 12 --optimizer sgd --lr 0.007 --momentum 0.9 --weight-decay 4e-5 \
    --eval-every 4 --val-images 1 --threads 2 --quiet --out "$out/mnv2" 2>/dev/null
  "$py" - "$crop" "$batch" "$(tail -1 "$out/mnv2/metrics.jsonl")" "$(cat "$out/mnv2.maxrss")" >> "$out/runs.jsonl" <<'PY'
import json, sys
m = json.loads(sys.argv[3])
print(json.dumps(dict(engine="mnv2", crop=int(sys.argv[1]), batch=int(sys.argv[2]),
                      images_per_s=m["images_per_s"], peak_rss_mb=int(sys.argv[4]) / 1024)))
PY
  "$py" scripts/train/seg_speed_vs_torch.py "$crop" "$batch" 6 --threads 2 >> "$out/runs.jsonl"
  tail -2 "$out/runs.jsonl"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = [json.loads(l) for l in open(out / "runs.jsonl") if l.strip()]
best = {e: max((r for r in runs if r["engine"] == e), key=lambda r: r["images_per_s"]) for e in ("mnv2", "torch")}
for e, r in best.items():
    print(f"{e:5} crop {r['crop']} batch {r['batch']}: {r['images_per_s']:.2f} img/s (best of "
          f"{sum(1 for x in runs if x['engine'] == e)}), peak RSS {r['peak_rss_mb']:.0f} MB")
ratio = best["mnv2"]["images_per_s"] / best["torch"]["images_per_s"]
print(f"mnv2 / torch = {ratio:.2f}")
(out / "summary.json").write_text(json.dumps(dict(mnv2=best["mnv2"], torch=best["torch"], ratio=ratio), indent=1) + "\n")
PY
