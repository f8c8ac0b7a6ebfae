#!/usr/bin/env bash
# A/B of two mnv2 binaries on this machine, in alternating runs (so drift hits both alike):
# inference latency (fp32 and int8, 1 and 2 threads, batch 1 at 224x224, the real torchvision
# weights) and training throughput (a small folder of real photos), plus the check that both
# binaries compute the same bytes: logits of `mnv2 run` and the weights `mnv2 train` writes.
#
#   bash scripts/bench/ab.sh OLD_MNV2 NEW_MNV2 [REPS]
#
# Prints one line per configuration: the best median of REPS runs for each binary and their
# ratio (new / old; below 1 is faster). Needs the fetched weights (scripts/fetch_assets.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
old=$1 new=$2 reps=${3:-3}
weights=weights/mobilenet_v2-b0353104.pth
[ -f "$weights" ] || { echo "ab.sh: $weights is missing: run scripts/fetch_assets.sh" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# The same int8 file for both (written by the old binary).
"$old" quantize --weights "$weights" --calib weights/calib --out "$out/int8.safetensors" >/dev/null

median() { # binary weights threads -> median ms of `mnv2 bench`
  "$1" bench --weights "$2" --threads "$3" --runs 300 --json | tail -1 |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("median_ms", d.get("median_us", 0) / 1e3))'
}

for cfg in "fp32 $weights 1" "fp32 $weights 2" "int8 $out/int8.safetensors 1" "int8 $out/int8.safetensors 2"; do
  set -- $cfg
  best_old=1e9 best_new=1e9
  for _ in $(seq "$reps"); do
    a=$(median "$old" "$2" "$3"); b=$(median "$new" "$2" "$3")
    best_old=$(python3 -c "print(min($best_old, $a))"); best_new=$(python3 -c "print(min($best_new, $b))")
  done
  python3 -c "print(f'$1 {$3} thread(s): old {$best_old:.3f} ms, new {$best_new:.3f} ms, new/old {$best_new/$best_old:.3f}')"
done

# Same logits, byte for byte.
python3 - "$out/x.npy" <<'PY'
import sys, struct
n = 2 * 3 * 224 * 224
header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 224, 224), }"
header += " " * (127 - 10 - len(header)) + "\n"
vals = [((i * 2654435761) % 1000) / 500.0 - 1.0 for i in range(n)]
with open(sys.argv[1], "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    f.write(struct.pack(f"<{n}f", *vals))
PY
for bin in old new; do
  "${!bin}" run --weights "$weights" --input "$out/x.npy" --output "$out/logits-$bin.npy" >/dev/null
  "${!bin}" run --weights "$out/int8.safetensors" --input "$out/x.npy" --output "$out/logits8-$bin.npy" >/dev/null
done
cmp -s "$out/logits-old.npy" "$out/logits-new.npy" && echo "fp32 logits: identical" || echo "fp32 logits: DIFFER"
cmp -s "$out/logits8-old.npy" "$out/logits8-new.npy" && echo "int8 logits: identical" || echo "int8 logits: DIFFER"

# Training: two classes of real photos, a few epochs at 96x96; same seed, same bytes out.
for c in a b; do mkdir -p "$out/data/$c"; done
i=0
for f in weights/calib/*.png tests/data/images/*.png; do
  cp "$f" "$out/data/$([ $((i % 2)) = 0 ] && echo a || echo b)/$(basename "$f")"
  i=$((i + 1))
done
train() { # binary out-dir -> seconds
  local t0 t1
  t0=$(date +%s.%N)
  "$1" train --data "$out/data" --val-split 0 --width 0.5 --resolution 96 --epochs 6 --batch 4 --seed 7 \
    --threads 2 --quiet --out "$2" >/dev/null 2>&1
  t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}
best_old=1e9 best_new=1e9
for r in $(seq "$reps"); do
  a=$(train "$old" "$out/train-old-$r"); b=$(train "$new" "$out/train-new-$r")
  best_old=$(python3 -c "print(min($best_old, $a))"); best_new=$(python3 -c "print(min($best_new, $b))")
done
python3 -c "print(f'training (6 epochs, 96x96, 2 threads): old {$best_old:.2f} s, new {$best_new:.2f} s, new/old {$best_new/$best_old:.3f}')"
# The safetensors header lists metadata in hash-map order (different from run to run, for
# either binary), so the files are compared as tensors and metadata, not as bytes.
python3 - "$out/train-old-1/final.safetensors" "$out/train-new-1/final.safetensors" <<'PY'
import json, struct, sys
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", {})
    return meta, {k: (v["dtype"], v["shape"], b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]) for k, v in h.items()}
(ma, ta), (mb, tb) = load(sys.argv[1]), load(sys.argv[2])
print("trained weights: identical" if (ma, ta) == (mb, tb) else "trained weights: DIFFER")
PY
