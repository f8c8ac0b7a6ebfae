#!/usr/bin/env bash
# Whole networks on an emulated Sapphire Rapids (scripts/emu/sapphire.sh), with MNV2_ISA=amx:
# every 1x1 convolution on the AMX kernels' real tile instructions, the rest on the AVX-512
# BF16 and VNNI kernels, at 1 and 2 threads. By default the engine's int8 tests (the real
# ImageNet weights: top-1 on the test photos, int8 against fp32) and its bf16 parity test
# (every torchvision fixture config, fast and streaming, within 2e-2 of fp32): what
# scripts/ci/amx_model.sh --real runs, for a machine without AMX. Correctness only.
#
#   bash scripts/emu/network_tests.sh [TARGET[:TEST]...]
#
# TARGET is a test target of the mobilenetv2 crate (tests/TARGET.rs), TEST one of its tests
# (default: all of them). The default is `int8 parity:bf16_logits_stay_near_torchvision`,
# about 15 minutes of emulator; `parity:every_mode_matches_torchvision` (fp32 against
# torchvision on every tier and mode: the reference, scalar, AVX2 and AVX-512 kernels) about
# 32 more. Needs the real weights (scripts/fetch_assets.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
if (($#)); then specs=("$@"); else specs=(int8 parity:bf16_logits_stay_near_torchvision); fi
[ -f weights/mobilenet_v2-b0353104.pth ] || { echo "network_tests: run scripts/fetch_assets.sh first" >&2; exit 1; }
runs=() bins=()
for spec in "${specs[@]}"; do
  target=${spec%%:*} test=
  [[ "$spec" == *:* ]] && test=${spec#*:}
  bin=$(cargo test -q --release -p mobilenetv2 --test "$target" --no-run --message-format=json |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
  [ -x "$bin" ] || { echo "network_tests: no test executable for $target" >&2; exit 1; }
  bins+=("$bin")
  runs+=("$bin${test:+ --exact $test}")
done
guest=$(mktemp)
trap 'rm -f "$guest"' EXIT
{
  echo "set -o pipefail"
  echo "export MNV2_ISA=amx"
  echo "failed=0"
  for r in "${runs[@]}"; do
    cat <<EOF
echo "--- ${r##*/}"
if $r --test-threads=1 --nocapture 2>&1 | grep -E '^test |max \|diff\||cosine|kernels|panicked|assert|left|right'; then
  echo "ok: ${r##*/}"
else
  echo "FAILED: ${r##*/}"; failed=\$((failed + 1))
fi
EOF
  done
  echo 'echo "network_tests: $failed of '"${#runs[@]}"' runs failed (MNV2_ISA=amx, emulated Sapphire Rapids)"'
  echo '[ $failed = 0 ]'
} >"$guest"
bash scripts/emu/sapphire.sh "$guest" "${bins[@]}" tests/data weights/mobilenet_v2-b0353104.pth weights/calib
