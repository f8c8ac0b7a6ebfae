#!/usr/bin/env bash
# The AMX kernels end to end on a machine without AMX: the engine's parity (bf16 against the
# torchvision fixtures, every config, fast and streaming, 1 and 2 threads), int8, bf16 DeepLab
# (whose projection's bias changes per image) and int8 SSDLite tests with every 1x1
# convolution on the AMX kernels' code (`MNV2_ISA=amx`), their tile instructions replaced by
# the software model of the tile unit (the `amx-model` feature of mnv2-kernels).
# The kernel tests already run each AMX kernel on the model; this runs whole networks through
# them. It fails unless the AMX kernels were the ones chosen. Needs AVX-512 BF16 and VNNI.
# With --real, the same tests on the CPU's own tiles (no model; needs AMX-BF16 and AMX-INT8:
# scripts/bench/amx_bringup.sh runs it first thing on such a machine).
# Usage: scripts/ci/amx_model.sh [--real]
set -euo pipefail
cd "$(dirname "$0")/../.."
features=(--features amx-model) on="tile model"
if [[ "${1:-}" == "--real" ]]; then
  features=() on="AMX tiles"
  if ! grep -q amx_bf16 /proc/cpuinfo || ! grep -q amx_int8 /proc/cpuinfo; then
    echo "amx_model: --real needs a CPU with AMX-BF16 and AMX-INT8; this one lacks one or both" >&2
    exit 2
  fi
elif ! grep -q avx512_bf16 /proc/cpuinfo || ! grep -q avx512_vnni /proc/cpuinfo; then
  echo "amx_model: SKIPPED (this CPU lacks AVX-512 BF16 or VNNI, which the model's epilogues need)"
  exit 0
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
MNV2_ISA=amx cargo test --release -p mobilenetv2 "${features[@]}" --test parity --test int8 \
  --test deeplab_fast --test ssdlite_int8 -- --nocapture \
  >"$log" 2>&1 || { tail -40 "$log" >&2; echo "amx_model: the tests failed" >&2; exit 1; }
for k in gemm_bf16_minmaxres_32x32_amx qgemm_u8s8s32_requant_32x32_amx; do
  if ! grep -q "$k" "$log"; then
    echo "amx_model: the engines did not run $k" >&2
    exit 1
  fi
done
grep -E 'over every parity config|cosine\(int8, fp32\)' "$log" | sed -e 's/; 1x1 kernels.*//' -e 's/^/amx_model: /'
echo "amx_model: the parity, int8, DeepLab and SSDLite int8 tests pass with every 1x1 convolution on the AMX kernels ($on)"
