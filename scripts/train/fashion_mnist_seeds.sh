#!/usr/bin/env bash
# The Fashion-MNIST comparison (fashion_mnist_vs_torch.sh: same recipe in mnv2 and PyTorch) over
# several seeds, one engine after the other per seed, then the spread: final test top-1 and time
# to 93% per engine (mean, min, max), peak RSS, and whether the means differ by more than the
# seeds' spread. Usage: scripts/train/fashion_mnist_seeds.sh [OUT] [SEEDS...]
# (default out/fashion-mnist-seeds, seeds 0 1 2). ~20 minutes per seed on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-out/fashion-mnist-seeds}
shift || true
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)
for s in "${seeds[@]}"; do
  if [ -f "$out/seed$s/summary.json" ]; then echo "seed $s: done ($out/seed$s/summary.json)"; continue; fi
  rm -rf "$out/seed$s"
  echo "== seed $s"
  bash scripts/train/fashion_mnist_vs_torch.sh "$out/seed$s" "$s"
done
python3 - "$out" "${seeds[@]}" <<'PY'
import json, sys
from pathlib import Path
out, seeds = Path(sys.argv[1]), sys.argv[2:]
runs = {s: json.loads((out / f"seed{s}" / "summary.json").read_text()) for s in seeds}
table = {}
for eng in ("mnv2", "torch"):
    fin = [100 * runs[s][eng]["final"] for s in seeds]
    t93 = [runs[s][eng]["t93"] for s in seeds]
    rss = [runs[s][eng]["peak_rss_mb"] for s in seeds]
    reached = [t for t in t93 if t is not None]
    table[eng] = dict(final=fin, mean=sum(fin) / len(fin), lo=min(fin), hi=max(fin), t93=t93,
                      t93_mean=sum(reached) / len(reached) if reached else None, rss_max=max(rss))
    t = table[eng]
    print(f"{eng:5}: final top-1 " + " ".join(f"{v:.2f}" for v in fin)
          + f" -> mean {t['mean']:.2f}% (range {t['lo']:.2f}..{t['hi']:.2f}); 93% after "
          + " ".join("-" if v is None else f"{v:.0f}" for v in t93)
          + (f" s (mean {t['t93_mean']:.0f} s)" if t["t93_mean"] else " s") + f"; peak RSS {t['rss_max']:.0f} MB")
m, th = table["mnv2"], table["torch"]
spread = max(m["hi"] - m["lo"], th["hi"] - th["lo"])
gap = m["mean"] - th["mean"]
verdict = "within" if abs(gap) <= spread else "beyond"
print(f"mean difference mnv2 - torch = {gap:+.2f} points, {verdict} the seeds' spread ({spread:.2f} points)")
table["gap"], table["spread"] = gap, spread
(out / "seeds.json").write_text(json.dumps(table, indent=1) + "\n")
PY
