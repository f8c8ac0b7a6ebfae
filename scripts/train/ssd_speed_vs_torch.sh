#!/usr/bin/env bash
# Detection training images/s and peak RSS, `mnv2 train --task detection --head ssdlite` against
# PyTorch eager (scripts/train/ssd_torch.py: the same network, torchvision's mobilenet_v2
# features + the hand-written SSDLite head, the same TF SSD loss, RMSProp, channels_last), same
# width, input, batch and threads, in one run. mnv2 trains on a composed scene set (data
# loading, SSD augmentation and the optimizer included; steady state = the steps after the
# second, from metrics.jsonl's train_seconds); PyTorch on random tensors with fixed boxes (no
# data loading at all, which favours it). The two alternate REPS times (default 2) per
# configuration and the best run of each counts; run on an otherwise idle machine.
# Usage: scripts/train/ssd_speed_vs_torch.sh [OUT] (default out/ssd-speed); writes
# OUT/summary.json. CONFIGS="RES BATCH STEPS;..." (default "300 24 10"), THREADS (2), WIDTH (1.0).
set -euo pipefail
cd "$(dirname "$0")/../.."
# PyTorch from $PYTHON, else the torch virtualenv of scripts/lib/venv.sh (made on first use).
source scripts/lib/venv.sh
py="$(mnv2_python torch)"
out=${1:-out/ssd-speed}
reps=${REPS:-2}
threads=${THREADS:-2}
width=${WIDTH:-1.0}
configs=${CONFIGS:-"300 24 10"}
mkdir -p "$out"
bash scripts/train/fetch_fashion_mnist.sh >/dev/null
bash scripts/fetch_backgrounds.sh >/dev/null
cargo build --release -q -p mnv2
mnv2=${CARGO_TARGET_DIR:-target}/release/mnv2
init=()
if [[ "$width" == "1.0" ]]; then
  init=(--init weights/mobilenet_v2-b0353104.pth)
fi
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
: > "$out/runs.jsonl"
IFS=';' read -ra cfgs <<< "$configs"
for cfg in "${cfgs[@]}"; do
  set -- $cfg
  res=$1 batch=$2 steps=$3
  data="$out/scenes-$res"
  [[ -f "$data/train/instances.json" ]] || "$mnv2" dataset compose --fashion-mnist data/fashion-mnist \
    --backgrounds data/backgrounds --out "$data" --train 96 --val 2 --size "$res" --seed 0 >/dev/null
  for rep in $(seq "$reps"); do
    rm -rf "$out/mnv2-$res"
    /usr/bin/time -f "%M" -o "$out/mnv2-$res.maxrss" "$mnv2" train --task detection --head ssdlite \
      --data "$data" "${init[@]}" --width "$width" --resolution "$res" --batch "$batch" --steps "$steps" \
      --eval-every 2 --val-images 1 --threads "$threads" --quiet --out "$out/mnv2-$res" 2>/dev/null
    "$py" - "$res" "$batch" "$out/mnv2-$res/metrics.jsonl" "$(cat "$out/mnv2-$res.maxrss")" >> "$out/runs.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[3]) if l.strip()]
first, last = lines[0], lines[-1]
ips = int(sys.argv[2]) * (last["step"] - first["step"]) / (last["train_seconds"] - first["train_seconds"])
print(json.dumps(dict(engine="mnv2", input=int(sys.argv[1]), batch=int(sys.argv[2]), images_per_s=ips,
                      peak_rss_mb=int(sys.argv[4]) / 1024, loss=last["train_loss"])))
PY
    "$py" scripts/train/ssd_torch.py --threads "$threads" --width "$width" "$res" "$batch" "$steps" \
      2>/dev/null >> "$out/runs.jsonl"
    tail -2 "$out/runs.jsonl"
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = [json.loads(l) for l in open(out / "runs.jsonl") if l.strip()]
summary = {}
for inp, b in sorted({(r["input"], r["batch"]) for r in runs}):
    mine = [r for r in runs if (r["input"], r["batch"]) == (inp, b)]
    best = {e: max((r for r in mine if r["engine"] == e), key=lambda r: r["images_per_s"]) for e in ("mnv2", "torch")}
    ratio = best["mnv2"]["images_per_s"] / best["torch"]["images_per_s"]
    for e, r in best.items():
        print(f"{e:5} {inp}x{inp} batch {b}: {r['images_per_s']:.2f} img/s (best of "
              f"{sum(1 for x in mine if x['engine'] == e)}), peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"      {inp}x{inp} batch {b}: mnv2 / torch = {ratio:.2f}")
    summary[f"{inp}x{inp}_b{b}"] = dict(mnv2=best["mnv2"], torch=best["torch"], ratio=ratio)
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
PY
