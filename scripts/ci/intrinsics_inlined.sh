#!/usr/bin/env bash
# Every std::arch intrinsic in the release binary is inlined into its kernel. An intrinsic
# left as a call (inside a closure or helper that lacks the kernel's target features, which
# LLVM then declined to inline) costs a call and a spill per vector instruction: in stop 17
# an int8 epilogue's `array::from_fn` closure made the int8 expand GEMMs ~10% slower, and a
# second caller of it 5x slower, with every test still passing.
# Usage: scripts/ci/intrinsics_inlined.sh [binary] (default: builds target/release/mnv2).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --release -p mnv2 --quiet
  bin=target/release/mnv2
fi
command -v objdump >/dev/null || { echo "intrinsics_inlined: objdump (binutils) is needed" >&2; exit 1; }
# Calls into core::arch's x86 vector intrinsics (not cpuid/xgetbv, which are calls by design).
calls=$(objdump -d --no-show-raw-insn -C "$bin" | grep -E 'call.*<core::core_arch::x86(_64)?::(avx|sse|fma|f16c|gfni|vpclmulqdq)' || true)
if [ -n "$calls" ]; then
  echo "intrinsics_inlined: $bin calls vector intrinsics instead of inlining them:" >&2
  echo "$calls" | sed 's/^ */  /' >&2
  exit 1
fi
echo "intrinsics_inlined: no vector intrinsic is called out of line in $bin"
