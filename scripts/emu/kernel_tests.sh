#!/usr/bin/env bash
# The kernel tests (mnv2-kernels' unit tests: every kernel against its scalar twin) on an
# emulated Sapphire Rapids (scripts/emu/sapphire.sh), with every x86 kernel ISA required:
# AVX2, AVX-512, VNNI, BF16 and both AMX tiers run, none is SKIPPED. Each test runs as its
# own process, so one failure or panic does not hide the others. A FILTER picks the tests whose
# name holds it; -FILTER leaves those out (default: every test). On a 2-core machine, after the
# first run's Bochs build (1.5 minutes), the 73 other tests take 4.5 minutes with the boot; the
# three GEMM tests over MobileNetV2's real shapes (every_kernel_matches_the_*: the scalar twin
# and the tile model run every shape too) about 21 more, 15 of them the bf16 one:
# -every_kernel_matches_the leaves the three out.
#
#   bash scripts/emu/kernel_tests.sh [[-]FILTER...]
#
# Correctness only (the emulator's speed says nothing of the CPU's). Exits 1 if any test failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$(cargo test -q -p mnv2-kernels --lib --no-run --message-format=json |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "kernel_tests: no test executable from cargo" >&2; exit 1; }
guest=$(mktemp)
trap 'rm -f "$guest"' EXIT
{
  echo "bin=$bin"
  echo "filters='${*:-}'"
  cat <<'EOF'
export MNV2_REQUIRE_ISA=avx2,avx512,avx512vnni,avx512bf16,amxbf16,amxint8
failed=0 ran=0
for t in $("$bin" --list 2>/dev/null | sed -n 's/: test$//p'); do
  want=1 hit=0 skip=0
  for f in $filters; do
    case "$f" in
      -*) case "$t" in *"${f#-}"*) skip=1 ;; esac ;;
      *) want=0; case "$t" in *"$f"*) hit=1 ;; esac ;;
    esac
  done
  [ $skip = 0 ] && { [ $want = 1 ] || [ $hit = 1 ]; } || continue
  ran=$((ran + 1))
  if "$bin" --exact --test-threads=1 --nocapture "$t" >/tmp/out 2>&1; then
    echo "ok     $t"
    grep -h "kernels tested\|checked:" /tmp/out | sed 's/^/         /' | cut -c1-200
  else
    failed=$((failed + 1))
    echo "FAILED $t"
    grep -v '^$' /tmp/out | tail -12 | sed 's/^/         /' | cut -c1-300
  fi
done
echo "kernel_tests: $ran tests, $failed failed (emulated Sapphire Rapids)"
[ $ran -gt 0 ] && [ $failed = 0 ]
EOF
} >"$guest"
bash scripts/emu/sapphire.sh "$guest" "$bin"
