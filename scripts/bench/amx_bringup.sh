#!/usr/bin/env bash
# Issue 14's AMX bring-up in one command, for the first session on a CPU with AMX-BF16 and
# AMX-INT8 (Intel Sapphire Rapids or later), where the AMX kernels have never run before:
#   1. the kernel tests with the real tiles required (MNV2_REQUIRE_ISA=amxbf16,amxint8): each
#      AMX kernel against its scalar twin, beside the same kernel on the tile model;
#   2. whole networks on the tiles: scripts/ci/amx_model.sh --real (bf16 parity against the
#      torchvision fixtures, int8, DeepLab, SSDLite int8, all with MNV2_ISA=amx);
#   3. bf16 and int8 latency with MNV2_ISA=amx against without (the AVX-512 kernels), in
#      alternating runs, 1 and 2 threads, batch 1 at 224x224 with the real torchvision weights;
#   4. with --peers, the peer harness with MNV2_ISA=amx (bench/results/*.md, as peers.sh).
# Then BENCHMARKS.md gets the tables, and the AMX kernels become the default where step 3
# shows them faster (isa::amx_enabled / amx_int8_enabled).
#
#   bash scripts/bench/amx_bringup.sh [--peers] [REPS]
#
# Exits 2 on a CPU without AMX (nothing to bring up). MNV2_AMX_MODEL=1 runs steps 1-3 on the
# tile model instead (the `amx-model` feature: any AVX-512 BF16/VNNI CPU, slowly, with a few
# runs per timing): a check of this script, not a benchmark.
set -euo pipefail
cd "$(dirname "$0")/../.."
peers=0
[[ "${1:-}" == "--peers" ]] && { peers=1; shift; }
reps=${1:-3} runs=300
weights=weights/mobilenet_v2-b0353104.pth
[ -f "$weights" ] || { echo "amx_bringup: $weights is missing: run scripts/fetch_assets.sh" >&2; exit 1; }

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
model=() on="AMX tiles"
if [[ "${MNV2_AMX_MODEL:-0}" == 1 ]]; then
  model=(--features amx-model) on="tile model" reps=1 runs=5
  ((peers)) && { echo "amx_bringup: --peers times real tiles only, not the model" >&2; exit 2; }
elif ! grep -q amx_bf16 /proc/cpuinfo || ! grep -q amx_int8 /proc/cpuinfo; then
  echo "amx_bringup: this CPU ($cpu) lacks AMX-BF16 or AMX-INT8: nothing to bring up" >&2
  exit 2
fi
echo "amx_bringup: on the $on; CPU: $cpu"

# 1. The kernels against their twins, the AMX entries required to run.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! MNV2_REQUIRE_ISA=amxbf16,amxint8 cargo test --release -p mnv2-kernels "${model[@]}" --lib -- --nocapture >"$log" 2>&1; then
  grep -E -A12 'FAILED|panicked|failures:' "$log" | tail -60 >&2
  echo "amx_bringup: the kernel tests failed (the AMX kernels against their twins)" >&2
  exit 1
fi
grep -E 'kernels tested|SKIPPED|test result' "$log" | sed 's/^/amx_bringup: kernels: /'

# 2. Whole networks.
if ((${#model[@]})); then bash scripts/ci/amx_model.sh; else bash scripts/ci/amx_model.sh --real; fi

# 3. Latency, MNV2_ISA=amx against the default kernels, alternating.
mobilenetv2_features=()
((${#model[@]})) && mobilenetv2_features=(--features mobilenetv2/amx-model)
cargo build --release -p mnv2 "${mobilenetv2_features[@]}"
bin=target/release/mnv2
out=$(mktemp -d)
trap 'rm -rf "$out" "$log"' EXIT
"$bin" quantize --weights "$weights" --calib weights/calib --out "$out/int8.safetensors" >/dev/null
bench() { # isa weights threads [args...] -> "median_ms kernels", from `mnv2 bench --json`
  local isa=$1 w=$2 t=$3
  shift 3
  local json
  json=$(MNV2_ISA=$isa "$bin" bench --weights "$w" --threads "$t" --runs "$runs" --json "$@" 2>"$out/err" | tail -1) || {
    cat "$out/err" >&2
    echo "amx_bringup: mnv2 bench failed (MNV2_ISA=$isa, $w, $t threads)" >&2
    exit 1
  }
  python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["median_ms"], ",".join(d["kernels"]))' <<<"$json"
}
for cfg in "bf16 $weights 1" "bf16 $weights 2" "int8 $out/int8.safetensors 1" "int8 $out/int8.safetensors 2"; do
  set -- $cfg
  extra=()
  [[ $1 == bf16 ]] && extra=(--precision bf16)
  best_avx=1e9 best_amx=1e9
  for _ in $(seq "$reps"); do
    r=$(bench "" "$2" "$3" "${extra[@]}")
    read -r a _ <<<"$r"
    r=$(bench amx "$2" "$3" "${extra[@]}")
    read -r b kernels <<<"$r"
    [[ $kernels == *_amx* ]] || { echo "amx_bringup: MNV2_ISA=amx chose no AMX kernel for $1: $kernels" >&2; exit 1; }
    best_avx=$(python3 -c "print(min($best_avx, $a))") best_amx=$(python3 -c "print(min($best_amx, $b))")
  done
  python3 -c "print(f'amx_bringup: $1, $3 thread(s): AVX-512 {$best_avx:.3f} ms, AMX {$best_amx:.3f} ms, AMX/AVX-512 {$best_amx/$best_avx:.3f}')"
done

# 4. The peers, mnv2 on the tiles.
((peers)) && MNV2_ISA=amx bash scripts/bench/peers.sh --passes 2
echo "amx_bringup: done"
