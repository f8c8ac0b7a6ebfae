#!/usr/bin/env bash
# The kernel ISAs (the names of MNV2_REQUIRE_ISA) that this host's /proc/cpuinfo advertises,
# comma-separated, with the same groupings as the kernels' run-time detection (isa.rs):
#   avx2 = AVX2 + FMA; avx512 = AVX-512 F/BW/VL/DQ; avx512vnni and avx512bf16 on top of avx512.
# The AMX tiers are left out: the kernel tests run the AMX kernels wherever the CPU has them,
# and scripts/bench/amx_bringup.sh requires them on such a machine.
# CI requires exactly these (MNV2_REQUIRE_ISA), so a kernel the CPU can run but the detection
# refused fails instead of printing SKIPPED, on every CPU kind the project's machines are
# (AVX-512 EPYCs and Xeons, AVX2-only EPYCs). With --missing: the ones this host lacks, for
# the log. Usage: scripts/ci/host_isas.sh [--missing]
set -euo pipefail
flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() {
  local f
  for f in "$@"; do [[ "$flags" == *" $f "* ]] || return 1; done
}
have=() lack=()
add() { if "$@"; then have+=("$isa"); else lack+=("$isa"); fi; }
isa=avx2 add has avx2 fma
isa=avx512 add has avx512f avx512bw avx512vl avx512dq
isa=avx512vnni add has avx512f avx512bw avx512vl avx512dq avx512_vnni
isa=avx512bf16 add has avx512f avx512bw avx512vl avx512dq avx512_bf16
if [[ "${1:-}" == "--missing" ]]; then
  (IFS=,; echo "${lack[*]}")
else
  (IFS=,; echo "${have[*]}")
fi
